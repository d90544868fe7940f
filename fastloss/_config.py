"""Every tuning knob and jit option of fastloss, in one place.

Why no fastmath flags on the CPU kernels: 'reassoc' and 'contract' let LLVM round differently in
different loops (a sum vectorised with another interleave, an FMA formed in one kernel and not in
the other), so ``value_and_grad`` would not match ``loss(...)`` and ``loss.grad(...)`` bit for
bit, nor one CPU another. Reductions instead accumulate into ``LANES`` explicit lanes, which LLVM
vectorises without reassociation, and a loss's helper that wants FMAs asks for them explicitly
(``fastloss.fused_multiply_add``: the same instruction in every kernel). 'nnan'/'ninf' (and fastmath=True) are never used anywhere: NaN
and Inf must propagate as IEEE arithmetic says.
"""
import os
import threading

#: Lanes of a vectorised reduction: element i of a block is added into lane i % LANES.
LANES = 64

#: Elements per block of an elementwise CPU kernel: values are computed into a buffer of this
#: size (in L1) and then added into the lanes; each block prefetches the block
#: CPU_PREFETCH_BYTES ahead, so it is also how many lines one burst of prefetches asks for.
#: (1024 with prefetching measured no faster than without: a burst of 128 lines stalls.)
BLOCK = 256

#: Blocks whose values the buffered elementwise CPU kernels (the exp/log losses) hold before adding
#: them into the lanes. One core, in cache, float32, on a Zen 5 VM, 4 against 1 (a sum after every
#: block): bce_with_logits' value 0.348-0.377 -> 0.330-0.341 ns per element, log_cosh's 0.347-0.374
#: -> 0.320-0.330, sigmoid_focal's value_and_grad 0.739-0.756 -> 0.708-0.724. Blocks of 1024 gained
#: as much, but a prefetch burst of 1024 elements stalls (see BLOCK).
SUM_BLOCKS = 4

#: Buffers (of SUM_BLOCKS blocks) whose factors the lanes of a ``log1p_sum_form`` multiply
#: together before one log1p moves them into the sums (kernels/cpu_elementwise.py, _PRODUCT): a
#: lane then holds the product of LOG1P_PASSES * BLOCK * SUM_BLOCKS / LANES factors 1 + e, each at
#: most 2, so at most 2**64 here; build() refuses a setting that could overflow float32. Fewer
#: passes cost more logarithms, more passes let the products' roundings add up for longer.
LOG1P_PASSES = 4

#: Elements per block of the row kernels' sums (kernels/cpu_rows.py).
ROW_BLOCK = 1024

#: error_model="numpy": a division by zero gives inf or NaN as IEEE says, instead of Python's
#: ZeroDivisionError, whose check is a branch in the loop that stops vectorisation.

#: Options of the scalar loss functions (value, derivative, helpers) on the CPU. They are
#: inlined into the loop at Numba-IR level so that LLVM sees one loop body and vectorises it.
CPU_SCALAR = dict(inline="always", cache=True, error_model="numpy")

#: Options of the serial chunk kernels: release the GIL so callers may use Python threads.
CPU_KERNEL = dict(nogil=True, cache=True, error_model="numpy")

#: Options of the parallel drivers (prange over fixed chunks).
CPU_PARALLEL = dict(nogil=True, cache=True, parallel=True, error_model="numpy")

#: Elements per chunk of a reduction. The partitioning depends on this number alone, never on
#: the thread count, so a reduction gives bitwise identical results whatever NUMBA_NUM_THREADS
#: is. Inputs of at most one chunk run serially: a parallel launch costs microseconds that a
#: small call cannot win back.
CHUNK = 1 << 15

#: Widest vectors (bits) the CPU kernels ask LLVM to vectorise with (``prefer_vector_width`` in
#: kernels/cpu_helpers.py; 0: LLVM's own choice for the CPU). LLVM's default on Intel's AVX-512
#: cores is 256; on a 2-core Sapphire Rapids-class VM, one core in cache, 512 made every
#: elementwise kernel 1.13-1.55 times faster (bce_with_logits' value and gradient 1.39 -> 0.92
#: ns per element). CPUs without AVX-512 are unaffected. The elementwise kernels have it in their
#: generated text (a change builds new kernels); the row kernels read it when Numba compiles
#: them, so after changing it clear Numba's cache of fastloss/kernels. (The streaming read of
#: the benchmarks' ceiling keeps LLVM's choice: it measured the same at either width.)
CPU_VECTOR_BITS = 512

#: How far ahead (bytes) the elementwise CPU kernels' block loops prefetch their inputs (0:
#: never). On a Sapphire Rapids-class VM, one thread at 2**24 float32 elements, bce_with_logits'
#: value went from 1.06 to 0.66 ns per element with 8 KiB. 4 KiB is 4-8% faster than 8 KiB for
#: the exp/log losses' values on 2 threads there and on Zen 5 (docs/cpu-performance.md, last
#: section); 1-4 KiB measured alike, 16 KiB slower, no prefetch slowest.
CPU_PREFETCH_BYTES = 4 << 10

#: cross_entropy's CPU kernels prefetch the next row while they compute this row's exps when the
#: row (rows: logits, and probability targets) takes between these many bytes: smaller rows gain
#: nothing, larger ones push the current row out of L2 (kernels/cpu_rows.py, _prefetch_stop).
#: Read when Numba compiles the row kernels: after changing them, clear Numba's cache.
CPU_ROW_PREFETCH_MIN_BYTES = 16 << 10
CPU_ROW_PREFETCH_MAX_BYTES = 512 << 10


def cache_dir():
    """Folder of the generated kernel modules (Numba writes its cache beside them)."""
    env = os.environ.get("FASTLOSS_CACHE_DIR")
    if env:
        return env
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "fastloss")


# -- CUDA (fastloss._cuda, kernels/cuda_*.py) -----------------------------------------------------
# Read when a kernel module is generated or a call is launched, never at import: numba-cuda is
# imported only when the first device array arrives. Block size, shuffle use and the jit options
# are written into each generated module's text, so changing them builds separate kernels (and
# a separate disk cache) rather than reusing stale ones.

#: Threads per block of the CUDA kernels (all but the block-per-row ones): a power of two from
#: 32 to 1024.
CUDA_BLOCK = 256

#: Elementwise kernels read pred and target (and write the gradient and per-element values) as
#: 4-element vectors (16 bytes for float32) when the pointers are aligned; each thread loads this
#: many vectors of each input before it computes any (the bytes in flight that keep HBM busy).
CUDA_EW_VECTORS = 2

#: Elements per thread an elementwise launch aims for before it adds blocks; up to
#: CUDA_MAX_BLOCKS blocks, beyond which threads loop (grid-stride). The partition of a reduction
#: depends on n and these numbers only, so every result is bitwise identical run to run. Many
#: short blocks (rather than one wave of long ones) keep every SM busy to the end.
CUDA_ITEMS_PER_THREAD = 8

#: Most blocks of one launch: also the most partial sums the finishing block adds up.
CUDA_MAX_BLOCKS = 16384

#: Use 16-byte vector loads and stores where the arrays allow them (False: one element at a
#: time everywhere, as the simulator's tests also check).
CUDA_VECTOR = True

#: Row losses (cross_entropy, multi_margin): one thread per row up to this many classes, a warp
#: per row above it, ...
CUDA_ROW_THREAD_MAX_C = 32

#: ... and a whole block per row (online softmax over the row, block reductions) from this
#: many classes on.
CUDA_ROW_BLOCK_MIN_C = 1024

#: Threads per block of the block-per-row kernels (a power of two, 32 to 1024; float64: half), ...
CUDA_ROW_BLOCK = 1024

#: ... registers per thread they are compiled for (the launch bound asks for 65536 / (this x
#: CUDA_ROW_BLOCK) blocks per SM: 64 gives 2048 resident threads; float64 rows get blocks of half
#: as many threads with twice the registers), ...
CUDA_ROW_REGS = 64

#: ... the most blocks (rows in flight) of one such launch (blocks loop over rows beyond), ...
CUDA_ROW_MAX_BLOCKS = 1 << 20

#: ... vectors (of 4 classes) each thread loads per step of cross_entropy's passes, ...
CUDA_ROW_VECTORS = 2

#: ... and whether cross_entropy's gradient pass reads the logits with the "last use" hint and
#: writes the gradient with the "streaming" hint (both evict first), to leave L2 to the logits
#: that the first pass of other rows has read and the second pass will read again.
CUDA_ROW_CACHE_HINTS = True

#: Check class labels (in range, within int64) and class weights (not NaN) on the device: a
#: small kernel over them, then one 8-byte read that waits for the caller's stream (after the
#: row kernel; before it when ``out=`` is given, so that bad input leaves ``out`` untouched).
#: False skips both: rows with bad labels then give NaN, as do NaN class weights.
CUDA_CHECK_LABELS = True

#: Use warp shuffles in block reductions (real GPUs). The CUDA simulator has none, so it always
#: uses the shared-memory tree; setting False makes a real GPU run the simulator's path too.
CUDA_WARP_SHUFFLE = True

#: Launch compiled kernels directly (cuda.core launch with pre-marshalled arguments) instead of
#: through the Numba dispatcher (which types and wraps every argument on every call).
CUDA_FAST_LAUNCH = True

#: How fast launches reach the driver: "ctypes" packs the parameters into one buffer and calls
#: cuLaunchKernel through ctypes (a few microseconds); "core" uses cuda.core's launch.
CUDA_LAUNCH_DRIVER = "ctypes"

#: Numba-family results: new device arrays as copies of a first one's attributes with new memory
#: (False: cuda.device_array every time, slower by microseconds per array).
CUDA_NUMBA_FAST_ALLOC = True

#: ... and arrays of at most this many bytes (results, scratch) take their memory from a pool of
#: blocks reused per stream instead of a new cudaMalloc each (0: never).
CUDA_POOL_MAX = 1 << 20

#: error_model="numpy": a division by zero gives inf or NaN as IEEE says, instead of Python's
#: ZeroDivisionError, whose check is a branch in the loop that stops vectorisation.

#: Options of the scalar loss functions (device functions) and of the kernels. No fastmath:
#: NaN and Inf must propagate as on the CPU. (The simulator ignores what it does not know.)
CUDA_SCALAR = dict(device=True, forceinline=True)
CUDA_KERNEL = dict()


#: Held around every parallel (prange) launch. Numba's threading layers are not all safe for
#: launches from several Python threads at once (the workqueue layer aborts the process), and a
#: parallel launch already uses every core: callers on many threads queue here, while serial
#: (small) calls, which release the GIL, run side by side.
PARALLEL_LOCK = threading.Lock()
