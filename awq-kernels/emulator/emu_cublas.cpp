// The CPU emulator's stand-in for cuBLAS (libcublas.so.12): the GEMMs cudarc calls, for f32, f16 and bf16
// matrices, over the emulated driver's memory (device pointers are host addresses, so scalars and matrices
// are read directly whatever the pointer mode). Everything runs at the call; the stream is only checked.
//
// Each element of C is one dot product accumulated in f32 in k order (the products of f16 or bf16 values are
// exact in f32), scaled by alpha, plus beta * C unless beta is 0 (C is then not read: it may hold NaN
// garbage), rounded once to the output type, to nearest even. cuBLAS on a GPU may sum in another order
// (tensor-core tiles, split-K), so results agree with it to f32 rounding, not bit for bit.
//
// Functions not defined here stay missing: cudarc then panics naming the symbol.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include "emu_half.h"

namespace {

// cublasStatus_t values (cublas_api.h).
enum cublasStatus_t : int {
    CUBLAS_STATUS_SUCCESS = 0,
    CUBLAS_STATUS_NOT_INITIALIZED = 1,
    CUBLAS_STATUS_ALLOC_FAILED = 3,
    CUBLAS_STATUS_INVALID_VALUE = 7,
    CUBLAS_STATUS_ARCH_MISMATCH = 8,
    CUBLAS_STATUS_MAPPING_ERROR = 11,
    CUBLAS_STATUS_EXECUTION_FAILED = 13,
    CUBLAS_STATUS_INTERNAL_ERROR = 14,
    CUBLAS_STATUS_NOT_SUPPORTED = 15,
    CUBLAS_STATUS_LICENSE_ERROR = 16,
};

// cublasOperation_t
constexpr int CUBLAS_OP_N = 0;
constexpr int CUBLAS_OP_T = 1;
constexpr int CUBLAS_OP_C = 2;  // the conjugate transpose: the transpose, for real types

// cudaDataType values (library_types.h).
constexpr int CUDA_R_32F = 0;
constexpr int CUDA_R_16F = 2;
constexpr int CUDA_R_16BF = 14;

// cublasComputeType_t values; before CUDA 11 GemmEx took a cudaDataType here, which cuBLAS still accepts.
constexpr int CUBLAS_COMPUTE_16F = 64;
constexpr int CUBLAS_COMPUTE_16F_PEDANTIC = 65;
constexpr int CUBLAS_COMPUTE_32F = 68;
constexpr int CUBLAS_COMPUTE_32F_PEDANTIC = 69;
constexpr int CUBLAS_COMPUTE_32F_FAST_16F = 74;
constexpr int CUBLAS_COMPUTE_32F_FAST_16BF = 75;
constexpr int CUBLAS_COMPUTE_32F_FAST_TF32 = 77;

// cublasPointerMode_t
constexpr int CUBLAS_POINTER_MODE_HOST = 0;
constexpr int CUBLAS_POINTER_MODE_DEVICE = 1;

float load(int type, const void* base, size_t index) {
    switch (type) {
    case CUDA_R_16F: return emu::f16_bits_to_f32(static_cast<const uint16_t*>(base)[index]);
    case CUDA_R_16BF: return emu::bf16_bits_to_f32(static_cast<const uint16_t*>(base)[index]);
    default: return static_cast<const float*>(base)[index];
    }
}

void store(int type, void* base, size_t index, float v) {
    switch (type) {
    case CUDA_R_16F: static_cast<uint16_t*>(base)[index] = emu::f32_to_f16_bits(v); break;
    case CUDA_R_16BF: static_cast<uint16_t*>(base)[index] = emu::f32_to_bf16_bits(v); break;
    default: static_cast<float*>(base)[index] = v; break;
    }
}

size_t element_size(int type) {
    return type == CUDA_R_32F ? 4 : 2;
}

// ---- GEMM ----

struct Operand {
    const void* data;  // of the first matrix of a batch
    int op;
    int ld;
    long long stride;
};

struct Gemm {
    int type;     // of C
    int ab_type;  // of A and B: C's, or 16-bit with an f32 C (cublasGemmEx's mixed precision)
    int m, n, k;
    float alpha, beta;
    Operand a, b;
    void* c;
    int ldc;
    long long stride_c;
    int batch;
};

// Element (i, j) of a stored column-major matrix is at i + j * ld; op(X) swaps i and j unless op is N.
size_t op_index(const Operand& x, int i, int j) {
    return x.op == CUBLAS_OP_N ? size_t(i) + size_t(j) * x.ld : size_t(j) + size_t(i) * x.ld;
}

// Columns of C computed together: their dot products run side by side, one SIMD lane each, while each one
// still sums in k order.
constexpr int kPanel = 8;

// op(A) (m x k) as f32 rows: a[i * k + l] = op(A)[i, l].
void pack_a(const Gemm& g, const void* data, float* a) {
    for (int i = 0; i < g.m; ++i) {
        for (int l = 0; l < g.k; ++l) {
            a[size_t(i) * g.k + l] = load(g.ab_type, data, op_index(g.a, i, l));
        }
    }
}

// op(B) (k x n) as f32 panels of kPanel columns, interleaved: b[(p * k + l) * kPanel + c] = op(B)[l, p *
// kPanel + c], 0 past the last column.
void pack_b(const Gemm& g, const void* data, float* b) {
    int panels = (g.n + kPanel - 1) / kPanel;
    for (int p = 0; p < panels; ++p) {
        for (int l = 0; l < g.k; ++l) {
            float* out = b + (size_t(p) * g.k + l) * kPanel;
            for (int c = 0; c < kPanel; ++c) {
                int j = p * kPanel + c;
                out[c] = j < g.n ? load(g.ab_type, data, op_index(g.b, l, j)) : 0.0f;
            }
        }
    }
}

// Panels [first, last) of columns of one product.
void gemm_panels(const Gemm& g, const float* a, const float* b, void* c, int first, int last) {
    for (int p = first; p < last; ++p) {
        const float* bp = b + size_t(p) * g.k * kPanel;
        int columns = std::min(kPanel, g.n - p * kPanel);
        for (int i = 0; i < g.m; ++i) {
            float acc[kPanel] = {};
            if (g.alpha != 0.0f) {
                const float* ai = a + size_t(i) * g.k;
                for (int l = 0; l < g.k; ++l) {
                    for (int col = 0; col < kPanel; ++col) {
                        acc[col] += ai[l] * bp[size_t(l) * kPanel + col];
                    }
                }
            }
            for (int col = 0; col < columns; ++col) {
                size_t at = size_t(i) + size_t(p * kPanel + col) * g.ldc;
                float v = g.alpha != 0.0f ? g.alpha * acc[col] : 0.0f;
                if (g.beta != 0.0f) {
                    v += g.beta * load(g.type, c, at);
                }
                store(g.type, c, at, v);
            }
        }
    }
}

void run_gemm(const Gemm& g) {
    if (g.m == 0 || g.n == 0) {
        return;
    }
    int panels = (g.n + kPanel - 1) / kPanel;
    std::vector<float> a(size_t(g.m) * g.k);
    std::vector<float> b(size_t(panels) * g.k * kPanel);
    // Threads only where the product is big enough to repay starting them.
    unsigned hw = std::max(1u, std::thread::hardware_concurrency());
    double work = double(g.m) * g.n * std::max(g.k, 1);
    int threads = work < (1 << 20) ? 1 : static_cast<int>(std::min<unsigned>(hw, unsigned(panels)));
    for (int batch = 0; batch < g.batch; ++batch) {
        size_t ab_size = element_size(g.ab_type);
        const char* a_data = static_cast<const char*>(g.a.data) + batch * g.a.stride * ab_size;
        const char* b_data = static_cast<const char*>(g.b.data) + batch * g.b.stride * ab_size;
        char* c_data = static_cast<char*>(g.c) + batch * g.stride_c * element_size(g.type);
        // With alpha 0, A and B are not read (they may be garbage); C is only scaled by beta.
        if (g.alpha != 0.0f) {
            pack_a(g, a_data, a.data());
            pack_b(g, b_data, b.data());
        }
        if (threads == 1) {
            gemm_panels(g, a.data(), b.data(), c_data, 0, panels);
            continue;
        }
        std::vector<std::thread> pool;
        for (int t = 0; t < threads; ++t) {
            int first = int(int64_t(panels) * t / threads);
            int last = int(int64_t(panels) * (t + 1) / threads);
            pool.emplace_back(gemm_panels, std::cref(g), a.data(), b.data(), c_data, first, last);
        }
        for (std::thread& t : pool) {
            t.join();
        }
    }
}

}  // namespace

struct cublasContext {
    int pointer_mode = CUBLAS_POINTER_MODE_HOST;
};
typedef cublasContext* cublasHandle_t;
struct CUstream_st;
typedef CUstream_st* cudaStream_t;

namespace {

struct Handles {
    std::mutex mutex;
    std::set<cublasHandle_t> live;
};

Handles& handles() {
    static Handles* h = new Handles;  // never destroyed: handles may be destroyed from Rust's statics
    return *h;
}

bool valid(cublasHandle_t handle) {
    Handles& h = handles();
    std::lock_guard<std::mutex> lock(h.mutex);
    return h.live.count(handle) != 0;
}

bool valid_op(int op) {
    return op == CUBLAS_OP_N || op == CUBLAS_OP_T || op == CUBLAS_OP_C;
}

// The scalar type of alpha and beta for a compute type (with the pre-CUDA 11 cudaDataType spellings), or -1
// for the compute types not emulated (integer, f64: no f64 matrices here).
int scalar_type(int compute) {
    switch (compute) {
    case CUBLAS_COMPUTE_16F:
    case CUBLAS_COMPUTE_16F_PEDANTIC:
    case CUDA_R_16F:
        return CUDA_R_16F;
    case CUBLAS_COMPUTE_32F:
    case CUBLAS_COMPUTE_32F_PEDANTIC:
    case CUBLAS_COMPUTE_32F_FAST_16F:
    case CUBLAS_COMPUTE_32F_FAST_16BF:
    case CUBLAS_COMPUTE_32F_FAST_TF32:
    case CUDA_R_32F:
        return CUDA_R_32F;
    default:
        return -1;
    }
}

cublasStatus_t gemm(cublasHandle_t handle, int transa, int transb, int m, int n, int k, const void* alpha,
                    const void* A, int a_type, int lda, long long stride_a, const void* B, int b_type, int ldb,
                    long long stride_b, const void* beta, void* C, int c_type, int ldc, long long stride_c,
                    int batch, int compute) {
    if (!valid(handle)) {
        return CUBLAS_STATUS_NOT_INITIALIZED;
    }
    if (!valid_op(transa) || !valid_op(transb) || m < 0 || n < 0 || k < 0 || batch < 0 ||
        lda < std::max(1, transa == CUBLAS_OP_N ? m : k) || ldb < std::max(1, transb == CUBLAS_OP_N ? k : n) ||
        ldc < std::max(1, m) || alpha == nullptr || beta == nullptr) {
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    int scalars = scalar_type(compute);
    bool supported_type = c_type == CUDA_R_32F || c_type == CUDA_R_16F || c_type == CUDA_R_16BF;
    // A and B of C's type, or 16-bit A and B with an f32 C and f32 compute; f16 compute (f16 scalars) is
    // only for f16 matrices, as in cuBLAS.
    bool mixed = c_type == CUDA_R_32F && scalars == CUDA_R_32F && a_type == b_type &&
                 (a_type == CUDA_R_16F || a_type == CUDA_R_16BF);
    if ((!mixed && (a_type != c_type || b_type != c_type)) || !supported_type || scalars < 0 ||
        (scalars == CUDA_R_16F && c_type != CUDA_R_16F)) {
        return CUBLAS_STATUS_NOT_SUPPORTED;
    }
    Gemm g;
    g.type = c_type;
    g.ab_type = a_type;
    g.m = m;
    g.n = n;
    g.k = k;
    g.alpha = load(scalars, alpha, 0);
    g.beta = load(scalars, beta, 0);
    g.a = Operand{A, transa, lda, stride_a};
    g.b = Operand{B, transb, ldb, stride_b};
    g.c = C;
    g.ldc = ldc;
    g.stride_c = stride_c;
    g.batch = batch;
    // EMU_SKIP_KERNELS=1 (see emu_driver.cpp): checked, not computed.
    static const bool skip = [] {
        const char* v = std::getenv("EMU_SKIP_KERNELS");
        return v != nullptr && std::strcmp(v, "1") == 0;
    }();
    if (!skip) {
        run_gemm(g);
    }
    return CUBLAS_STATUS_SUCCESS;
}

}  // namespace

extern "C" {

cublasStatus_t cublasCreate_v2(cublasHandle_t* handle) {
    if (handle == nullptr) {
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    Handles& h = handles();
    std::lock_guard<std::mutex> lock(h.mutex);
    *handle = new cublasContext;
    h.live.insert(*handle);
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasDestroy_v2(cublasHandle_t handle) {
    Handles& h = handles();
    std::lock_guard<std::mutex> lock(h.mutex);
    if (h.live.erase(handle) == 0) {
        return CUBLAS_STATUS_NOT_INITIALIZED;
    }
    delete handle;
    return CUBLAS_STATUS_SUCCESS;
}

// All work runs at the call, so the stream needs no remembering.
cublasStatus_t cublasSetStream_v2(cublasHandle_t handle, cudaStream_t) {
    return valid(handle) ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_NOT_INITIALIZED;
}

// The emulated GEMMs need no workspace.
cublasStatus_t cublasSetWorkspace_v2(cublasHandle_t handle, void*, size_t) {
    return valid(handle) ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_NOT_INITIALIZED;
}

// Every math mode gets the same f32 accumulation, never reduced precision.
cublasStatus_t cublasSetMathMode(cublasHandle_t handle, int mode) {
    if (!valid(handle)) {
        return CUBLAS_STATUS_NOT_INITIALIZED;
    }
    constexpr int kKnownModes = 0x1F;  // DEFAULT..TF32_TENSOR_OP in the low bits, DISALLOW_REDUCED... (16)
    return (mode & ~kKnownModes) == 0 ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_INVALID_VALUE;
}

cublasStatus_t cublasSetPointerMode_v2(cublasHandle_t handle, int mode) {
    if (!valid(handle)) {
        return CUBLAS_STATUS_NOT_INITIALIZED;
    }
    if (mode != CUBLAS_POINTER_MODE_HOST && mode != CUBLAS_POINTER_MODE_DEVICE) {
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    handle->pointer_mode = mode;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGetPointerMode_v2(cublasHandle_t handle, int* mode) {
    if (!valid(handle)) {
        return CUBLAS_STATUS_NOT_INITIALIZED;
    }
    if (mode == nullptr) {
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    *mode = handle->pointer_mode;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGemmEx(cublasHandle_t handle, int transa, int transb, int m, int n, int k,
                            const void* alpha, const void* A, int a_type, int lda, const void* B, int b_type,
                            int ldb, const void* beta, void* C, int c_type, int ldc, int compute, int) {
    return gemm(handle, transa, transb, m, n, k, alpha, A, a_type, lda, 0, B, b_type, ldb, 0, beta, C, c_type,
                ldc, 0, 1, compute);
}

cublasStatus_t cublasGemmStridedBatchedEx(cublasHandle_t handle, int transa, int transb, int m, int n, int k,
                                          const void* alpha, const void* A, int a_type, int lda,
                                          long long stride_a, const void* B, int b_type, int ldb,
                                          long long stride_b, const void* beta, void* C, int c_type, int ldc,
                                          long long stride_c, int batch, int compute, int) {
    return gemm(handle, transa, transb, m, n, k, alpha, A, a_type, lda, stride_a, B, b_type, ldb, stride_b,
                beta, C, c_type, ldc, stride_c, batch, compute);
}

cublasStatus_t cublasSgemm_v2(cublasHandle_t handle, int transa, int transb, int m, int n, int k,
                              const float* alpha, const float* A, int lda, const float* B, int ldb,
                              const float* beta, float* C, int ldc) {
    return gemm(handle, transa, transb, m, n, k, alpha, A, CUDA_R_32F, lda, 0, B, CUDA_R_32F, ldb, 0, beta, C,
                CUDA_R_32F, ldc, 0, 1, CUBLAS_COMPUTE_32F);
}

cublasStatus_t cublasSgemmStridedBatched(cublasHandle_t handle, int transa, int transb, int m, int n, int k,
                                         const float* alpha, const float* A, int lda, long long stride_a,
                                         const float* B, int ldb, long long stride_b, const float* beta,
                                         float* C, int ldc, long long stride_c, int batch) {
    return gemm(handle, transa, transb, m, n, k, alpha, A, CUDA_R_32F, lda, stride_a, B, CUDA_R_32F, ldb,
                stride_b, beta, C, CUDA_R_32F, ldc, stride_c, batch, CUBLAS_COMPUTE_32F);
}

const char* cublasGetStatusString(cublasStatus_t status) {
    switch (status) {
    case CUBLAS_STATUS_SUCCESS: return "success";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "the library was not initialized";
    case CUBLAS_STATUS_ALLOC_FAILED: return "the resource allocation failed";
    case CUBLAS_STATUS_INVALID_VALUE: return "an invalid numeric value was used as an argument";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "an absent device architectural feature is required";
    case CUBLAS_STATUS_MAPPING_ERROR: return "an access to GPU memory space failed";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "the GPU program failed to execute";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "an internal operation failed";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "the functionality requested is not supported";
    case CUBLAS_STATUS_LICENSE_ERROR: return "error detected trying to check the license";
    }
    return "unknown error";
}

}  // extern "C"
