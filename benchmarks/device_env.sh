# The environment every Python run on the lent H200 needs (sourced by device.sh; source it
# before calling a script there directly). Run from the repository root.
export PATH="$(dirname "$(command -v python3)"):$PATH"  # the recipes call `python`
export PYTHONPATH=/tmp/site:$PWD:/tmp/smolpkg PYTHONUNBUFFERED=1 ASYNCTLS_CACHE_DIR=/tmp/acache SGLANG_DISABLE_REQUEST_LOGGING=1
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TORCHDYNAMO_DISABLE=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export FLASHINFER_WORKSPACE_BASE=$PWD/.carry/jit TVM_FFI_CACHE_DIR=$PWD/.carry/jit/tvm-ffi TRITON_CACHE_DIR=$PWD/.carry/jit/triton
