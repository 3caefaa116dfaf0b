def register() -> None:  # placeholder until the adapter lands
    pass
