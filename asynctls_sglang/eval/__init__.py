"""Accuracy evaluation over an SGLang server's OpenAI-compatible API (RULER, offline).

ruler.py is the CLI; tasks/datagen generate RULER samples, prompts renders them, server/client
talk to the server, scoring and report turn answers into a table, JSON and a plot.
"""
