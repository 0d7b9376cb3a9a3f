// The CPU emulator's stand-in for the CUDA driver (libcuda.so.1): the driver API functions cudarc loads by
// name, with their CUDA ABI, over one emulated device whose memory is host memory. Everything runs
// synchronously at the call, so streams and events only need to be valid handles, and an event is complete
// as soon as it is recorded. Kernels are not compiled from the PTX: cuModuleGetFunction checks the PTX
// declares the kernel, then takes it from the kernel runtime's registry (emu_runtime.h), and cuLaunchKernel
// runs it there.
//
// The emulator also checks what a real driver would refuse, so that a bug fails here as it would on a GPU:
// handles that were never created or were already destroyed, copies and sets outside an allocation, launch
// configurations over the device's limits, dynamic shared memory above what the kernel was opted into.
//
// Functions the emulator does not define stay missing: cudarc then panics naming the symbol, which is how to
// find the next one to add. EMU_TRACE=1 prints every call to stderr, EMU_STATS=1 a count of each at exit;
// EMU_SKIP_KERNELS=1 checks launches without running them (a program's own cost per step then shows).
#include "emu_runtime.h"

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

namespace {

// cudaError_enum values (cuda.h).
enum CUresult : int {
    CUDA_SUCCESS = 0,
    CUDA_ERROR_INVALID_VALUE = 1,
    CUDA_ERROR_OUT_OF_MEMORY = 2,
    CUDA_ERROR_NOT_INITIALIZED = 3,
    CUDA_ERROR_INVALID_DEVICE = 101,
    CUDA_ERROR_INVALID_IMAGE = 200,
    CUDA_ERROR_INVALID_CONTEXT = 201,
    CUDA_ERROR_INVALID_HANDLE = 400,
    CUDA_ERROR_NOT_FOUND = 500,
    CUDA_ERROR_LAUNCH_FAILED = 719,
    CUDA_ERROR_NOT_SUPPORTED = 801,
};

struct ErrorText {
    int code;
    const char* name;
    const char* text;
};

// The codes this driver returns, and those a caller is likely to ask about.
const ErrorText kErrors[] = {
    {0, "CUDA_SUCCESS", "no error"},
    {1, "CUDA_ERROR_INVALID_VALUE", "invalid argument"},
    {2, "CUDA_ERROR_OUT_OF_MEMORY", "out of memory"},
    {3, "CUDA_ERROR_NOT_INITIALIZED", "initialization error"},
    {4, "CUDA_ERROR_DEINITIALIZED", "driver shutting down"},
    {100, "CUDA_ERROR_NO_DEVICE", "no CUDA-capable device is detected"},
    {101, "CUDA_ERROR_INVALID_DEVICE", "invalid device ordinal"},
    {200, "CUDA_ERROR_INVALID_IMAGE", "device kernel image is invalid"},
    {201, "CUDA_ERROR_INVALID_CONTEXT", "invalid device context"},
    {209, "CUDA_ERROR_NO_BINARY_FOR_GPU", "no kernel image is available for execution on the device"},
    {218, "CUDA_ERROR_INVALID_PTX", "a PTX JIT compilation failed"},
    {222, "CUDA_ERROR_UNSUPPORTED_PTX_VERSION", "the provided PTX was compiled with an unsupported toolchain."},
    {400, "CUDA_ERROR_INVALID_HANDLE", "invalid resource handle"},
    {401, "CUDA_ERROR_ILLEGAL_STATE", "the operation cannot be performed in the present state"},
    {500, "CUDA_ERROR_NOT_FOUND", "named symbol not found"},
    {600, "CUDA_ERROR_NOT_READY", "device not ready"},
    {700, "CUDA_ERROR_ILLEGAL_ADDRESS", "an illegal memory access was encountered"},
    {701, "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES", "too many resources requested for launch"},
    {702, "CUDA_ERROR_LAUNCH_TIMEOUT", "the launch timed out and was terminated"},
    {709, "CUDA_ERROR_CONTEXT_IS_DESTROYED", "context is destroyed"},
    {710, "CUDA_ERROR_ASSERT", "device-side assert triggered"},
    {719, "CUDA_ERROR_LAUNCH_FAILED", "unspecified launch failure"},
    {801, "CUDA_ERROR_NOT_SUPPORTED", "operation not supported"},
    {999, "CUDA_ERROR_UNKNOWN", "unknown error"},
};

const char kDeviceName[] = "CPU emulator (awq-kernels/emulator)";
constexpr int kDriverVersion = 12090;
constexpr size_t kTotalMemory = size_t(64) << 30;
// CUDA guarantees at least this alignment for device allocations; kernels' vector loads rely on it.
constexpr size_t kAllocAlignment = 256;
// Real device memory is not zeroed; all-ones bytes read as NaN in f16, bf16 and f32, so a kernel that reads
// memory nobody wrote shows up in its results.
constexpr unsigned char kGarbageByte = 0xFF;

constexpr int kMaxThreadsPerBlock = 1024;
constexpr int kDefaultSharedPerBlock = 48 * 1024;
constexpr int kOptinSharedPerBlock = 232448;

// CUdevice_attribute values (cuda.h) the emulated device reports; every other attribute reads 0. Close to an
// H100, except for the multiprocessor count: the crate sizes grids by it and every block runs on the CPU.
int device_attribute(int attribute) {
    switch (attribute) {
    case 1: return kMaxThreadsPerBlock;  // MAX_THREADS_PER_BLOCK
    case 2: return 1024;                 // MAX_BLOCK_DIM_X
    case 3: return 1024;                 // MAX_BLOCK_DIM_Y
    case 4: return 64;                   // MAX_BLOCK_DIM_Z
    case 5: return 2147483647;           // MAX_GRID_DIM_X
    case 6: return 65535;                // MAX_GRID_DIM_Y
    case 7: return 65535;                // MAX_GRID_DIM_Z
    case 8: return kDefaultSharedPerBlock;  // MAX_SHARED_MEMORY_PER_BLOCK
    case 9: return 65536;                // TOTAL_CONSTANT_MEMORY
    case 10: return 32;                  // WARP_SIZE
    case 11: return 2147483647;          // MAX_PITCH
    case 12: return 65536;               // MAX_REGISTERS_PER_BLOCK
    case 13: return 1980000;             // CLOCK_RATE (kHz)
    case 14: return 512;                 // TEXTURE_ALIGNMENT
    case 15: return 1;                   // GPU_OVERLAP
    case 16: return 4;                   // MULTIPROCESSOR_COUNT
    case 18: return 0;                   // INTEGRATED
    case 19: return 1;                   // CAN_MAP_HOST_MEMORY
    case 30: return 512;                 // SURFACE_ALIGNMENT
    case 31: return 1;                   // CONCURRENT_KERNELS
    case 36: return 2619000;             // MEMORY_CLOCK_RATE (kHz)
    case 37: return 5120;                // GLOBAL_MEMORY_BUS_WIDTH
    case 38: return 1 << 20;             // L2_CACHE_SIZE: small, there is no cache, and the AWQ autotuner writes twice it before each timed call
    case 39: return 2048;                // MAX_THREADS_PER_MULTIPROCESSOR
    case 40: return 2;                   // ASYNC_ENGINE_COUNT
    case 41: return 1;                   // UNIFIED_ADDRESSING
    case 75: return 9;                   // COMPUTE_CAPABILITY_MAJOR
    case 76: return 0;                   // COMPUTE_CAPABILITY_MINOR
    case 78: return 1;                   // STREAM_PRIORITIES_SUPPORTED
    case 79: return 1;                   // GLOBAL_L1_CACHE_SUPPORTED
    case 80: return 1;                   // LOCAL_L1_CACHE_SUPPORTED
    case 81: return 233472;              // MAX_SHARED_MEMORY_PER_MULTIPROCESSOR
    case 82: return 65536;               // MAX_REGISTERS_PER_MULTIPROCESSOR
    case 87: return 2;                   // SINGLE_TO_DOUBLE_PRECISION_PERF_RATIO
    case 90: return 1;                   // COMPUTE_PREEMPTION_SUPPORTED
    case 97: return kOptinSharedPerBlock;  // MAX_SHARED_MEMORY_PER_BLOCK_OPTIN
    case 106: return 32;                 // MAX_BLOCKS_PER_MULTIPROCESSOR
    case 111: return 1024;               // RESERVED_SHARED_MEMORY_PER_BLOCK
    case 115: return 1;                  // MEMORY_POOLS_SUPPORTED
    default: return 0;
    }
}

}  // namespace

// The driver's opaque handle types; only this file looks inside them.
struct CUctx_st {
    int retained = 0;
};

// Work runs to completion at each call, so a stream has nothing to hold (nor do its flags or priority
// change anything); it only has to be a distinct, checkable handle.
struct CUstream_st {};

struct CUevent_st {
    unsigned flags;
    bool recorded = false;
    std::chrono::steady_clock::time_point time;
};

struct CUfunc_st {
    const EmuKernel* kernel;
    int max_dynamic_shared = kDefaultSharedPerBlock;
    int preferred_carveout = -1;
};

struct CUmod_st {
    std::string ptx;
    // One handle per kernel name, as the driver returns the same CUfunction for the same name.
    std::map<std::string, std::unique_ptr<CUfunc_st>> functions;
};

struct CUmemPoolHandle_st {
    int reuse_follow_event_dependencies = 1;
    int reuse_allow_opportunistic = 1;
    int reuse_allow_internal_dependencies = 1;
    uint64_t release_threshold = 0;
    uint64_t used_high = 0;
};

typedef int CUdevice;
typedef unsigned long long CUdeviceptr;
typedef CUctx_st* CUcontext;
typedef CUstream_st* CUstream;
typedef CUevent_st* CUevent;
typedef CUmod_st* CUmodule;
typedef CUfunc_st* CUfunction;
typedef CUmemPoolHandle_st* CUmemoryPool;

struct CUuuid {
    char bytes[16];
};

namespace {

struct Allocation {
    size_t size;
    bool pinned_host;
};

struct Driver {
    std::mutex mutex;
    std::atomic<bool> initialized{false};  // read without the mutex by the calls that need no tables
    CUctx_st primary;
    CUmemPoolHandle_st pool;
    std::map<uintptr_t, Allocation> allocations;
    size_t device_bytes_in_use = 0;
    std::set<CUstream> streams;
    std::set<CUevent> events;
    std::set<CUmodule> modules;
    std::set<CUfunction> functions;  // those of the loaded modules
};

Driver& driver() {
    // Never destroyed, so that calls made while the process exits (cudarc frees from Drop impls, which may run
    // in thread-local destructors or on other threads) still find it.
    static Driver* d = new Driver;
    return *d;
}

// Launches are serialized apart from the tables, so that a long kernel does not block other calls.
std::mutex& launch_mutex() {
    static std::mutex* m = new std::mutex;
    return *m;
}

// The calling thread's context stack (cuCtxPush/Pop, cuCtxSetCurrent replaces the top).
thread_local std::vector<CUcontext> context_stack;

bool env_is_1(const char* name) {
    const char* v = std::getenv(name);
    return v != nullptr && std::strcmp(v, "1") == 0;
}

// EMU_SKIP_KERNELS=1: launches are checked and counted but not run (nor are cuBLAS GEMMs, device-to-device
// copies and memsets: the device's work), fresh allocations are not filled and copies to the host read as
// zeros, so a program runs its usual course at any model size and its own cost per step (host work and
// driver calls) shows in its timings; its results are meaningless.
bool skip_kernels() {
    static const bool on = env_is_1("EMU_SKIP_KERNELS");
    return on;
}

// EMU_STATS=1: how many times each driver function was called, and each kernel launched, printed to stderr
// at exit.
struct CallCounts {
    std::mutex mutex;
    std::map<std::string, long long> counts;
    ~CallCounts() {
        std::fprintf(stderr, "[emu driver] calls:\n");
        for (const auto& [name, count] : counts) {
            std::fprintf(stderr, "  %-32s %lld\n", name.c_str(), count);
        }
    }
};

void count_call(const std::string& what) {
    static const bool stats = env_is_1("EMU_STATS");
    if (!stats) {
        return;
    }
    static CallCounts* counts = new CallCounts;  // printed by the atexit handler below
    static const bool registered = [] {
        std::atexit([] { delete counts; });
        return true;
    }();
    (void)registered;
    std::lock_guard<std::mutex> lock(counts->mutex);
    ++counts->counts[what];
}

void trace(const char* function) {
    static const bool on = env_is_1("EMU_TRACE");
    if (on) {
        std::fprintf(stderr, "[emu driver] %s\n", function);
    }
    count_call(function);
}

// What most calls require: cuInit done and the primary context current on this thread.
CUresult check_context(const Driver& d) {
    if (!d.initialized) {
        return CUDA_ERROR_NOT_INITIALIZED;
    }
    if (context_stack.empty() || context_stack.back() != &d.primary || d.primary.retained == 0) {
        return CUDA_ERROR_INVALID_CONTEXT;
    }
    return CUDA_SUCCESS;
}

// The null stream, CU_STREAM_LEGACY (0x1) and CU_STREAM_PER_THREAD (0x2) always exist.
bool valid_stream(const Driver& d, CUstream s) {
    uintptr_t v = reinterpret_cast<uintptr_t>(s);
    return v <= 2 || d.streams.count(s) != 0;
}

// Whether [ptr, ptr + bytes) lies in one allocation made by this driver.
bool in_allocation(const Driver& d, uintptr_t ptr, size_t bytes) {
    auto it = d.allocations.upper_bound(ptr);
    if (it == d.allocations.begin()) {
        return false;
    }
    --it;
    uintptr_t end = it->first + it->second.size;
    return ptr <= end && bytes <= end - ptr;
}

CUresult allocate(Driver& d, void** out, size_t bytes, bool pinned_host) {
    size_t rounded = (bytes + kAllocAlignment - 1) / kAllocAlignment * kAllocAlignment;
    if (!pinned_host && rounded > kTotalMemory - d.device_bytes_in_use) {
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    void* p = nullptr;
    if (posix_memalign(&p, kAllocAlignment, rounded) != 0) {
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    if (!skip_kernels()) {  // nothing reads it then, and touching every page would dominate the timings
        std::memset(p, kGarbageByte, rounded);
    }
    d.allocations[reinterpret_cast<uintptr_t>(p)] = Allocation{bytes, pinned_host};
    if (!pinned_host) {
        d.device_bytes_in_use += bytes;
        if (d.device_bytes_in_use > d.pool.used_high) {
            d.pool.used_high = d.device_bytes_in_use;
        }
    }
    *out = p;
    return CUDA_SUCCESS;
}

CUresult release(Driver& d, uintptr_t ptr, bool pinned_host) {
    auto it = d.allocations.find(ptr);
    if (it == d.allocations.end() || it->second.pinned_host != pinned_host) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    if (!pinned_host) {
        d.device_bytes_in_use -= it->second.size;
    }
    std::free(reinterpret_cast<void*>(ptr));
    d.allocations.erase(it);
    return CUDA_SUCCESS;
}

CUresult alloc_device(CUdeviceptr* dptr, size_t bytes, bool async, CUstream stream) {
    Driver& d = driver();
    std::lock_guard<std::mutex> lock(d.mutex);
    if (CUresult r = check_context(d)) {
        return r;
    }
    if (dptr == nullptr) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    if (async && !valid_stream(d, stream)) {
        return CUDA_ERROR_INVALID_HANDLE;
    }
    // cuMemAlloc refuses 0 bytes (documented); the stream-ordered allocator, like cudaMalloc, gives null.
    if (bytes == 0) {
        if (!async) {
            return CUDA_ERROR_INVALID_VALUE;
        }
        *dptr = 0;
        return CUDA_SUCCESS;
    }
    void* p = nullptr;
    CUresult r = allocate(d, &p, bytes, false);
    if (r == CUDA_SUCCESS) {
        *dptr = reinterpret_cast<uintptr_t>(p);
    }
    return r;
}

CUresult free_device(CUdeviceptr dptr, bool async, CUstream stream) {
    Driver& d = driver();
    std::lock_guard<std::mutex> lock(d.mutex);
    if (CUresult r = check_context(d)) {
        return r;
    }
    if (async && !valid_stream(d, stream)) {
        return CUDA_ERROR_INVALID_HANDLE;
    }
    if (dptr == 0) {
        return CUDA_SUCCESS;
    }
    return release(d, dptr, false);
}

enum class Side { Host, Device };

// A copy of `bytes` bytes; a Device side must lie in an allocation of this driver (device memory, or pinned
// host memory, which unified addressing lets the driver take as device memory).
CUresult copy(uintptr_t dst, Side dst_side, uintptr_t src, Side src_side, size_t bytes, const CUstream* stream) {
    Driver& d = driver();
    std::lock_guard<std::mutex> lock(d.mutex);
    if (CUresult r = check_context(d)) {
        return r;
    }
    if (stream != nullptr && !valid_stream(d, *stream)) {
        return CUDA_ERROR_INVALID_HANDLE;
    }
    if (bytes == 0) {
        return CUDA_SUCCESS;
    }
    if (dst == 0 || src == 0 || (dst_side == Side::Device && !in_allocation(d, dst, bytes)) ||
        (src_side == Side::Device && !in_allocation(d, src, bytes))) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    if (skip_kernels() && dst_side == Side::Device && src_side == Side::Device) {
        return CUDA_SUCCESS;  // work of the device, skipped as kernels are
    }
    std::memmove(reinterpret_cast<void*>(dst), reinterpret_cast<const void*>(src), bytes);
    return CUDA_SUCCESS;
}

// Sets `count` elements of `width` bytes (1, 2 or 4) at dst to `value`.
CUresult set(uintptr_t dst, uint32_t value, size_t width, size_t count, const CUstream* stream) {
    Driver& d = driver();
    std::lock_guard<std::mutex> lock(d.mutex);
    if (CUresult r = check_context(d)) {
        return r;
    }
    if (stream != nullptr && !valid_stream(d, *stream)) {
        return CUDA_ERROR_INVALID_HANDLE;
    }
    if (count == 0) {
        return CUDA_SUCCESS;
    }
    if (dst % width != 0 || count > SIZE_MAX / width || !in_allocation(d, dst, count * width)) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    if (skip_kernels()) {
        return CUDA_SUCCESS;  // work of the device, skipped as kernels are
    }
    unsigned char* p = reinterpret_cast<unsigned char*>(dst);
    if (width == 1) {
        std::memset(p, static_cast<unsigned char>(value), count);
    } else {
        for (size_t i = 0; i < count; ++i) {
            std::memcpy(p + i * width, &value, width);  // little-endian: the low `width` bytes
        }
    }
    return CUDA_SUCCESS;
}

CUresult record_time(CUevent event, CUstream stream) {
    Driver& d = driver();
    std::lock_guard<std::mutex> lock(d.mutex);
    if (CUresult r = check_context(d)) {
        return r;
    }
    if (d.events.count(event) == 0 || !valid_stream(d, stream)) {
        return CUDA_ERROR_INVALID_HANDLE;
    }
    event->recorded = true;
    event->time = std::chrono::steady_clock::now();
    return CUDA_SUCCESS;
}

CUresult existing_event(CUevent event) {
    Driver& d = driver();
    std::lock_guard<std::mutex> lock(d.mutex);
    if (!d.initialized) {
        return CUDA_ERROR_NOT_INITIALIZED;
    }
    return d.events.count(event) != 0 ? CUDA_SUCCESS : CUDA_ERROR_INVALID_HANDLE;
}

CUresult existing_stream(CUstream stream) {
    Driver& d = driver();
    std::lock_guard<std::mutex> lock(d.mutex);
    if (CUresult r = check_context(d)) {
        return r;
    }
    return valid_stream(d, stream) ? CUDA_SUCCESS : CUDA_ERROR_INVALID_HANDLE;
}

CUresult create_stream(CUstream* out, unsigned flags) {
    Driver& d = driver();
    std::lock_guard<std::mutex> lock(d.mutex);
    if (CUresult r = check_context(d)) {
        return r;
    }
    if (out == nullptr || (flags & ~1u) != 0) {  // CU_STREAM_DEFAULT or CU_STREAM_NON_BLOCKING
        return CUDA_ERROR_INVALID_VALUE;
    }
    CUstream s = new CUstream_st;
    d.streams.insert(s);
    *out = s;
    return CUDA_SUCCESS;
}

// Whether the PTX text declares a kernel (an .entry) called `name`.
bool ptx_declares_entry(const std::string& ptx, const char* name) {
    const std::string needle = std::string(".entry ") + name;
    for (size_t at = ptx.find(needle); at != std::string::npos; at = ptx.find(needle, at + 1)) {
        char next = at + needle.size() < ptx.size() ? ptx[at + needle.size()] : '\0';
        if (next == '(' || next == ' ' || next == '\t' || next == '\n' || next == '\r' || next == '{') {
            return true;
        }
    }
    return false;
}

CUresult load_module(CUmodule* out, const void* image) {
    Driver& d = driver();
    std::lock_guard<std::mutex> lock(d.mutex);
    if (CUresult r = check_context(d)) {
        return r;
    }
    if (out == nullptr || image == nullptr) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    // Kernels come from the runtime's registry by name, so only PTX text, whose .entry lines name them,
    // can be checked against it; a cubin or fatbin is refused rather than trusted blindly.
    std::string ptx(static_cast<const char*>(image));
    if (ptx.find(".entry") == std::string::npos && ptx.find(".version") == std::string::npos) {
        std::fprintf(stderr, "[emu driver] cuModuleLoadData: the image is not PTX text; the emulator loads only PTX\n");
        return CUDA_ERROR_INVALID_IMAGE;
    }
    CUmodule m = new CUmod_st{std::move(ptx), {}};
    d.modules.insert(m);
    *out = m;
    return CUDA_SUCCESS;
}

CUresult host_alloc(void** pp, size_t bytes, unsigned flags) {
    Driver& d = driver();
    std::lock_guard<std::mutex> lock(d.mutex);
    if (CUresult r = check_context(d)) {
        return r;
    }
    if (pp == nullptr || bytes == 0 || (flags & ~7u) != 0) {  // PORTABLE | DEVICEMAP | WRITECOMBINED
        return CUDA_ERROR_INVALID_VALUE;
    }
    return allocate(d, pp, bytes, true);
}

// The name or the description of an error code.
CUresult error_text(CUresult error, const char** out, bool name) {
    if (out == nullptr) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    for (const ErrorText& e : kErrors) {
        if (e.code == error) {
            *out = name ? e.name : e.text;
            return CUDA_SUCCESS;
        }
    }
    *out = nullptr;
    return CUDA_ERROR_INVALID_VALUE;
}

// The checks every call about the device makes: the driver initialized, the one device, an output to write.
CUresult check_device(CUdevice device) {
    if (!driver().initialized) {
        return CUDA_ERROR_NOT_INITIALIZED;
    }
    return device == 0 ? CUDA_SUCCESS : CUDA_ERROR_INVALID_DEVICE;
}

CUresult check_device(CUdevice device, const void* out) {
    if (CUresult r = check_device(device); r != CUDA_SUCCESS) {
        return r;
    }
    return out == nullptr ? CUDA_ERROR_INVALID_VALUE : CUDA_SUCCESS;
}

}  // namespace

extern "C" {

CUresult cuInit(unsigned flags) {
    trace(__func__);
    if (flags != 0) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    Driver& d = driver();
    std::lock_guard<std::mutex> lock(d.mutex);
    d.initialized = true;
    return CUDA_SUCCESS;
}

CUresult cuDriverGetVersion(int* version) {
    trace(__func__);
    if (version == nullptr) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    *version = kDriverVersion;
    return CUDA_SUCCESS;
}


CUresult cuGetErrorName(CUresult error, const char** out) {
    trace(__func__);
    return error_text(error, out, true);
}

CUresult cuGetErrorString(CUresult error, const char** out) {
    trace(__func__);
    return error_text(error, out, false);
}

// ---- Devices ----

CUresult cuDeviceGetCount(int* count) {
    trace(__func__);
    if (!driver().initialized) {
        return CUDA_ERROR_NOT_INITIALIZED;
    }
    if (count == nullptr) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    *count = 1;
    return CUDA_SUCCESS;
}

CUresult cuDeviceGet(CUdevice* device, int ordinal) {
    trace(__func__);
    if (!driver().initialized) {
        return CUDA_ERROR_NOT_INITIALIZED;
    }
    if (device == nullptr) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    if (ordinal != 0) {
        return CUDA_ERROR_INVALID_DEVICE;
    }
    *device = 0;
    return CUDA_SUCCESS;
}

CUresult cuDeviceGetName(char* name, int len, CUdevice device) {
    trace(__func__);
    if (CUresult r = check_device(device); r != CUDA_SUCCESS) {
        return r;
    }
    if (name == nullptr || len <= 0) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    std::snprintf(name, static_cast<size_t>(len), "%s", kDeviceName);
    return CUDA_SUCCESS;
}

CUresult cuDeviceTotalMem_v2(size_t* bytes, CUdevice device) {
    trace(__func__);
    if (CUresult r = check_device(device, bytes); r != CUDA_SUCCESS) {
        return r;
    }
    *bytes = kTotalMemory;
    return CUDA_SUCCESS;
}

CUresult cuDeviceGetUuid(CUuuid* uuid, CUdevice device) {
    trace(__func__);
    if (CUresult r = check_device(device, uuid); r != CUDA_SUCCESS) {
        return r;
    }
    std::memcpy(uuid->bytes, "awq-kernels-emu\0", 16);
    return CUDA_SUCCESS;
}

CUresult cuDeviceGetAttribute(int* value, int attribute, CUdevice device) {
    trace(__func__);
    if (CUresult r = check_device(device, value); r != CUDA_SUCCESS) {
        return r;
    }
    *value = device_attribute(attribute);
    return CUDA_SUCCESS;
}

// ---- Contexts: the device's primary context is the only one ----

CUresult cuDevicePrimaryCtxRetain(CUcontext* ctx, CUdevice device) {
    trace(__func__);
    Driver& d = driver();
    std::lock_guard<std::mutex> lock(d.mutex);
    if (CUresult r = check_device(device, ctx); r != CUDA_SUCCESS) {
        return r;
    }
    ++d.primary.retained;
    *ctx = &d.primary;
    return CUDA_SUCCESS;
}

CUresult cuDevicePrimaryCtxRelease_v2(CUdevice device) {
    trace(__func__);
    Driver& d = driver();
    std::lock_guard<std::mutex> lock(d.mutex);
    if (CUresult r = check_device(device); r != CUDA_SUCCESS) {
        return r;
    }
    if (d.primary.retained == 0) {
        return CUDA_ERROR_INVALID_CONTEXT;
    }
    --d.primary.retained;
    return CUDA_SUCCESS;
}

CUresult cuCtxSetCurrent(CUcontext ctx) {
    trace(__func__);
    Driver& d = driver();
    if (!d.initialized) {
        return CUDA_ERROR_NOT_INITIALIZED;
    }
    if (ctx == nullptr) {
        if (!context_stack.empty()) {
            context_stack.pop_back();
        }
        return CUDA_SUCCESS;
    }
    if (ctx != &d.primary) {
        return CUDA_ERROR_INVALID_CONTEXT;
    }
    if (context_stack.empty()) {
        context_stack.push_back(ctx);
    } else {
        context_stack.back() = ctx;
    }
    return CUDA_SUCCESS;
}

CUresult cuCtxGetCurrent(CUcontext* ctx) {
    trace(__func__);
    if (!driver().initialized) {
        return CUDA_ERROR_NOT_INITIALIZED;
    }
    if (ctx == nullptr) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    *ctx = context_stack.empty() ? nullptr : context_stack.back();
    return CUDA_SUCCESS;
}

CUresult cuCtxPushCurrent_v2(CUcontext ctx) {
    trace(__func__);
    Driver& d = driver();
    if (!d.initialized) {
        return CUDA_ERROR_NOT_INITIALIZED;
    }
    if (ctx != &d.primary) {
        return CUDA_ERROR_INVALID_CONTEXT;
    }
    context_stack.push_back(ctx);
    return CUDA_SUCCESS;
}

CUresult cuCtxPopCurrent_v2(CUcontext* ctx) {
    trace(__func__);
    if (!driver().initialized) {
        return CUDA_ERROR_NOT_INITIALIZED;
    }
    if (context_stack.empty()) {
        return CUDA_ERROR_INVALID_CONTEXT;
    }
    if (ctx != nullptr) {
        *ctx = context_stack.back();
    }
    context_stack.pop_back();
    return CUDA_SUCCESS;
}

CUresult cuCtxGetDevice(CUdevice* device) {
    trace(__func__);
    Driver& d = driver();
    std::lock_guard<std::mutex> lock(d.mutex);
    if (CUresult r = check_context(d)) {
        return r;
    }
    if (device == nullptr) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    *device = 0;
    return CUDA_SUCCESS;
}

CUresult cuCtxSynchronize() {
    trace(__func__);
    Driver& d = driver();
    std::lock_guard<std::mutex> lock(d.mutex);
    return check_context(d);
}

// ---- Streams ----

CUresult cuStreamCreate(CUstream* stream, unsigned flags) {
    trace(__func__);
    return create_stream(stream, flags);
}

CUresult cuStreamCreateWithPriority(CUstream* stream, unsigned flags, int) {
    trace(__func__);
    return create_stream(stream, flags);
}

CUresult cuStreamDestroy_v2(CUstream stream) {
    trace(__func__);
    Driver& d = driver();
    std::lock_guard<std::mutex> lock(d.mutex);
    if (CUresult r = check_context(d)) {
        return r;
    }
    if (d.streams.erase(stream) == 0) {
        return CUDA_ERROR_INVALID_HANDLE;
    }
    delete stream;
    return CUDA_SUCCESS;
}

CUresult cuStreamSynchronize(CUstream stream) {
    trace(__func__);
    return existing_stream(stream);
}

CUresult cuStreamQuery(CUstream stream) {
    trace(__func__);
    return existing_stream(stream);
}

CUresult cuStreamWaitEvent(CUstream stream, CUevent event, unsigned flags) {
    trace(__func__);
    Driver& d = driver();
    std::lock_guard<std::mutex> lock(d.mutex);
    if (CUresult r = check_context(d)) {
        return r;
    }
    if (!valid_stream(d, stream) || d.events.count(event) == 0) {
        return CUDA_ERROR_INVALID_HANDLE;
    }
    return flags & ~1u ? CUDA_ERROR_INVALID_VALUE : CUDA_SUCCESS;  // CU_EVENT_WAIT_DEFAULT or _EXTERNAL
}

// ---- Events: complete when recorded, since all work is done at the call ----

CUresult cuEventCreate(CUevent* event, unsigned flags) {
    trace(__func__);
    Driver& d = driver();
    std::lock_guard<std::mutex> lock(d.mutex);
    if (CUresult r = check_context(d)) {
        return r;
    }
    if (event == nullptr || (flags & ~7u) != 0) {  // BLOCKING_SYNC | DISABLE_TIMING | INTERPROCESS
        return CUDA_ERROR_INVALID_VALUE;
    }
    CUevent e = new CUevent_st{flags, false, {}};
    d.events.insert(e);
    *event = e;
    return CUDA_SUCCESS;
}

CUresult cuEventDestroy_v2(CUevent event) {
    trace(__func__);
    Driver& d = driver();
    std::lock_guard<std::mutex> lock(d.mutex);
    if (!d.initialized) {
        return CUDA_ERROR_NOT_INITIALIZED;
    }
    if (d.events.erase(event) == 0) {
        return CUDA_ERROR_INVALID_HANDLE;
    }
    delete event;
    return CUDA_SUCCESS;
}

CUresult cuEventRecord(CUevent event, CUstream stream) {
    trace(__func__);
    return record_time(event, stream);
}

CUresult cuEventSynchronize(CUevent event) {
    trace(__func__);
    return existing_event(event);
}

CUresult cuEventQuery(CUevent event) {
    trace(__func__);
    return existing_event(event);
}

CUresult cuEventElapsedTime(float* ms, CUevent start, CUevent end) {
    trace(__func__);
    Driver& d = driver();
    std::lock_guard<std::mutex> lock(d.mutex);
    if (!d.initialized) {
        return CUDA_ERROR_NOT_INITIALIZED;
    }
    if (ms == nullptr) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    constexpr unsigned kDisableTiming = 2;
    if (d.events.count(start) == 0 || d.events.count(end) == 0 || !start->recorded || !end->recorded ||
        (start->flags & kDisableTiming) || (end->flags & kDisableTiming)) {
        return CUDA_ERROR_INVALID_HANDLE;
    }
    *ms = std::chrono::duration<float, std::milli>(end->time - start->time).count();
    return CUDA_SUCCESS;
}

// ---- Memory: device pointers are host addresses ----

CUresult cuMemAlloc_v2(CUdeviceptr* dptr, size_t bytes) {
    trace(__func__);
    return alloc_device(dptr, bytes, false, nullptr);
}

CUresult cuMemAllocAsync(CUdeviceptr* dptr, size_t bytes, CUstream stream) {
    trace(__func__);
    return alloc_device(dptr, bytes, true, stream);
}

CUresult cuMemFree_v2(CUdeviceptr dptr) {
    trace(__func__);
    return free_device(dptr, false, nullptr);
}

CUresult cuMemFreeAsync(CUdeviceptr dptr, CUstream stream) {
    trace(__func__);
    return free_device(dptr, true, stream);
}

CUresult cuMemGetInfo_v2(size_t* free_bytes, size_t* total_bytes) {
    trace(__func__);
    Driver& d = driver();
    std::lock_guard<std::mutex> lock(d.mutex);
    if (CUresult r = check_context(d)) {
        return r;
    }
    if (free_bytes == nullptr || total_bytes == nullptr) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    *free_bytes = kTotalMemory - d.device_bytes_in_use;
    *total_bytes = kTotalMemory;
    return CUDA_SUCCESS;
}

CUresult cuMemHostAlloc(void** pp, size_t bytes, unsigned flags) {
    trace(__func__);
    return host_alloc(pp, bytes, flags);
}

CUresult cuMemAllocHost_v2(void** pp, size_t bytes) {
    trace(__func__);
    return host_alloc(pp, bytes, 0);
}

CUresult cuMemFreeHost(void* p) {
    trace(__func__);
    Driver& d = driver();
    std::lock_guard<std::mutex> lock(d.mutex);
    if (CUresult r = check_context(d)) {
        return r;
    }
    return release(d, reinterpret_cast<uintptr_t>(p), true);
}

// ---- Memory pool: the device's default pool is the allocator above; attributes are only remembered ----

CUresult cuDeviceGetDefaultMemPool(CUmemoryPool* pool, CUdevice device) {
    trace(__func__);
    if (CUresult r = check_device(device, pool); r != CUDA_SUCCESS) {
        return r;
    }
    Driver& d = driver();
    *pool = &d.pool;
    return CUDA_SUCCESS;
}

CUresult cuMemPoolSetAttribute(CUmemoryPool pool, int attribute, void* value) {
    trace(__func__);
    Driver& d = driver();
    std::lock_guard<std::mutex> lock(d.mutex);
    if (pool != &d.pool) {
        return CUDA_ERROR_INVALID_HANDLE;
    }
    if (value == nullptr) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    switch (attribute) {
    case 1: pool->reuse_follow_event_dependencies = *static_cast<int*>(value); return CUDA_SUCCESS;
    case 2: pool->reuse_allow_opportunistic = *static_cast<int*>(value); return CUDA_SUCCESS;
    case 3: pool->reuse_allow_internal_dependencies = *static_cast<int*>(value); return CUDA_SUCCESS;
    case 4: pool->release_threshold = *static_cast<uint64_t*>(value); return CUDA_SUCCESS;
    case 6:  // RESERVED_MEM_HIGH and USED_MEM_HIGH can only be reset, to the current use
    case 8:
        if (*static_cast<uint64_t*>(value) != 0) {
            return CUDA_ERROR_INVALID_VALUE;
        }
        pool->used_high = d.device_bytes_in_use;
        return CUDA_SUCCESS;
    default: return CUDA_ERROR_INVALID_VALUE;
    }
}

CUresult cuMemPoolGetAttribute(CUmemoryPool pool, int attribute, void* value) {
    trace(__func__);
    Driver& d = driver();
    std::lock_guard<std::mutex> lock(d.mutex);
    if (pool != &d.pool) {
        return CUDA_ERROR_INVALID_HANDLE;
    }
    if (value == nullptr) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    switch (attribute) {
    case 1: *static_cast<int*>(value) = pool->reuse_follow_event_dependencies; return CUDA_SUCCESS;
    case 2: *static_cast<int*>(value) = pool->reuse_allow_opportunistic; return CUDA_SUCCESS;
    case 3: *static_cast<int*>(value) = pool->reuse_allow_internal_dependencies; return CUDA_SUCCESS;
    case 4: *static_cast<uint64_t*>(value) = pool->release_threshold; return CUDA_SUCCESS;
    case 5:  // RESERVED_MEM_CURRENT: freed memory goes straight back to the host, so reserved is used
    case 7: *static_cast<uint64_t*>(value) = d.device_bytes_in_use; return CUDA_SUCCESS;
    case 6:
    case 8: *static_cast<uint64_t*>(value) = pool->used_high; return CUDA_SUCCESS;
    default: return CUDA_ERROR_INVALID_VALUE;
    }
}

CUresult cuMemPoolTrimTo(CUmemoryPool pool, size_t) {
    trace(__func__);
    Driver& d = driver();
    std::lock_guard<std::mutex> lock(d.mutex);
    return pool == &d.pool ? CUDA_SUCCESS : CUDA_ERROR_INVALID_HANDLE;
}

// ---- Copies and sets: synchronous whatever the stream ----

CUresult cuMemcpyHtoD_v2(CUdeviceptr dst, const void* src, size_t bytes) {
    trace(__func__);
    return copy(dst, Side::Device, reinterpret_cast<uintptr_t>(src), Side::Host, bytes, nullptr);
}

CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void* src, size_t bytes, CUstream stream) {
    trace(__func__);
    return copy(dst, Side::Device, reinterpret_cast<uintptr_t>(src), Side::Host, bytes, &stream);
}

// With kernels skipped (EMU_SKIP_KERNELS=1) device memory holds garbage, so what comes back to the host reads
// as zeros: a program then sees valid indices (token 0, argmax 0) and runs its usual course.
static CUresult zeroed_if_skipping(CUresult result, void* dst, size_t bytes) {
    if (result == CUDA_SUCCESS && skip_kernels() && bytes > 0) {
        std::memset(dst, 0, bytes);
    }
    return result;
}

CUresult cuMemcpyDtoH_v2(void* dst, CUdeviceptr src, size_t bytes) {
    trace(__func__);
    CUresult result = copy(reinterpret_cast<uintptr_t>(dst), Side::Host, src, Side::Device, bytes, nullptr);
    return zeroed_if_skipping(result, dst, bytes);
}

CUresult cuMemcpyDtoHAsync_v2(void* dst, CUdeviceptr src, size_t bytes, CUstream stream) {
    trace(__func__);
    CUresult result = copy(reinterpret_cast<uintptr_t>(dst), Side::Host, src, Side::Device, bytes, &stream);
    return zeroed_if_skipping(result, dst, bytes);
}

CUresult cuMemcpyDtoD_v2(CUdeviceptr dst, CUdeviceptr src, size_t bytes) {
    trace(__func__);
    return copy(dst, Side::Device, src, Side::Device, bytes, nullptr);
}

CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr dst, CUdeviceptr src, size_t bytes, CUstream stream) {
    trace(__func__);
    return copy(dst, Side::Device, src, Side::Device, bytes, &stream);
}

// With unified addressing either side of cuMemcpy may be any host memory, so neither is checked.
CUresult cuMemcpy(CUdeviceptr dst, CUdeviceptr src, size_t bytes) {
    trace(__func__);
    return copy(dst, Side::Host, src, Side::Host, bytes, nullptr);
}

CUresult cuMemcpyAsync(CUdeviceptr dst, CUdeviceptr src, size_t bytes, CUstream stream) {
    trace(__func__);
    return copy(dst, Side::Host, src, Side::Host, bytes, &stream);
}

CUresult cuMemsetD8_v2(CUdeviceptr dst, unsigned char value, size_t count) {
    trace(__func__);
    return set(dst, value, 1, count, nullptr);
}

CUresult cuMemsetD8Async(CUdeviceptr dst, unsigned char value, size_t count, CUstream stream) {
    trace(__func__);
    return set(dst, value, 1, count, &stream);
}

CUresult cuMemsetD16_v2(CUdeviceptr dst, unsigned short value, size_t count) {
    trace(__func__);
    return set(dst, value, 2, count, nullptr);
}

CUresult cuMemsetD16Async(CUdeviceptr dst, unsigned short value, size_t count, CUstream stream) {
    trace(__func__);
    return set(dst, value, 2, count, &stream);
}

CUresult cuMemsetD32_v2(CUdeviceptr dst, unsigned value, size_t count) {
    trace(__func__);
    return set(dst, value, 4, count, nullptr);
}

CUresult cuMemsetD32Async(CUdeviceptr dst, unsigned value, size_t count, CUstream stream) {
    trace(__func__);
    return set(dst, value, 4, count, &stream);
}

// ---- Modules and kernels ----

CUresult cuModuleLoadData(CUmodule* module, const void* image) {
    trace(__func__);
    return load_module(module, image);
}

// JIT options only steer a compilation the emulator does not do.
CUresult cuModuleLoadDataEx(CUmodule* module, const void* image, unsigned, void*, void**) {
    trace(__func__);
    return load_module(module, image);
}

CUresult cuModuleUnload(CUmodule module) {
    trace(__func__);
    Driver& d = driver();
    std::lock_guard<std::mutex> lock(d.mutex);
    if (CUresult r = check_context(d)) {
        return r;
    }
    if (d.modules.erase(module) == 0) {
        return CUDA_ERROR_INVALID_HANDLE;
    }
    for (const auto& entry : module->functions) {
        d.functions.erase(entry.second.get());
    }
    delete module;
    return CUDA_SUCCESS;
}

CUresult cuModuleGetFunction(CUfunction* function, CUmodule module, const char* name) {
    trace(__func__);
    Driver& d = driver();
    std::lock_guard<std::mutex> lock(d.mutex);
    if (CUresult r = check_context(d)) {
        return r;
    }
    if (function == nullptr || name == nullptr) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    if (d.modules.count(module) == 0) {
        return CUDA_ERROR_INVALID_HANDLE;
    }
    auto found = module->functions.find(name);
    if (found != module->functions.end()) {
        *function = found->second.get();
        return CUDA_SUCCESS;
    }
    if (!ptx_declares_entry(module->ptx, name)) {
        return CUDA_ERROR_NOT_FOUND;
    }
    const EmuKernel* kernel = emu_find_kernel(name);
    if (kernel == nullptr) {
        std::fprintf(stderr, "[emu driver] kernel %s is in the PTX but not in the emulator's registry\n", name);
        return CUDA_ERROR_NOT_FOUND;
    }
    auto f = std::make_unique<CUfunc_st>();
    f->kernel = kernel;
    *function = f.get();
    d.functions.insert(f.get());
    module->functions.emplace(name, std::move(f));
    return CUDA_SUCCESS;
}

CUresult cuFuncGetAttribute(int* value, int attribute, CUfunction function) {
    trace(__func__);
    Driver& d = driver();
    std::lock_guard<std::mutex> lock(d.mutex);
    if (value == nullptr) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    if (d.functions.count(function) == 0) {
        return CUDA_ERROR_INVALID_HANDLE;
    }
    switch (attribute) {
    case 0: *value = kMaxThreadsPerBlock; break;  // MAX_THREADS_PER_BLOCK
    case 4: *value = 64; break;                   // NUM_REGS: 64 x 1024 threads fills the register file
    case 5: *value = 80; break;                   // PTX_VERSION: the crate's PTX targets sm_80
    case 6: *value = 90; break;                   // BINARY_VERSION: the device's compute capability
    case 8: *value = function->max_dynamic_shared; break;
    case 9: *value = function->preferred_carveout; break;
    default: *value = 0; break;  // static shared, constant and local sizes are not known without compiling
    }
    return CUDA_SUCCESS;
}

CUresult cuFuncSetAttribute(CUfunction function, int attribute, int value) {
    trace(__func__);
    Driver& d = driver();
    std::lock_guard<std::mutex> lock(d.mutex);
    if (d.functions.count(function) == 0) {
        return CUDA_ERROR_INVALID_HANDLE;
    }
    switch (attribute) {
    case 8:  // MAX_DYNAMIC_SHARED_SIZE_BYTES
        if (value < 0 || value > kOptinSharedPerBlock) {
            return CUDA_ERROR_INVALID_VALUE;
        }
        function->max_dynamic_shared = value;
        return CUDA_SUCCESS;
    case 9:  // PREFERRED_SHARED_MEMORY_CARVEOUT: a percentage, or -1 for no preference
        if (value < -1 || value > 100) {
            return CUDA_ERROR_INVALID_VALUE;
        }
        function->preferred_carveout = value;
        return CUDA_SUCCESS;
    default:
        std::fprintf(stderr, "[emu driver] cuFuncSetAttribute: attribute %d is not emulated\n", attribute);
        return CUDA_ERROR_NOT_SUPPORTED;
    }
}

// A cache preference only tunes a real GPU.
CUresult cuFuncSetCacheConfig(CUfunction function, int config) {
    trace(__func__);
    Driver& d = driver();
    std::lock_guard<std::mutex> lock(d.mutex);
    if (d.functions.count(function) == 0) {
        return CUDA_ERROR_INVALID_HANDLE;
    }
    return config >= 0 && config <= 3 ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

CUresult cuLaunchKernel(CUfunction function, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                        unsigned bz, unsigned shared_bytes, CUstream stream, void** params, void** extra) {
    trace(__func__);
    const EmuKernel* kernel;
    {
        Driver& d = driver();
        std::lock_guard<std::mutex> lock(d.mutex);
        if (CUresult r = check_context(d)) {
            return r;
        }
        if (d.functions.count(function) == 0 || !valid_stream(d, stream)) {
            return CUDA_ERROR_INVALID_HANDLE;
        }
        // Arguments packed in `extra` are not emulated: cudarc passes kernelParams.
        if (extra != nullptr) {
            std::fprintf(stderr, "[emu driver] cuLaunchKernel: `extra` arguments are not emulated\n");
            return CUDA_ERROR_NOT_SUPPORTED;
        }
        unsigned long long threads = 1ull * bx * by * bz;
        if (gx == 0 || gy == 0 || gz == 0 || gx > 2147483647u || gy > 65535 || gz > 65535 || bx == 0 ||
            by == 0 || bz == 0 || bx > 1024 || by > 1024 || bz > 64 || threads > kMaxThreadsPerBlock) {
            return CUDA_ERROR_INVALID_VALUE;
        }
        if (shared_bytes > static_cast<unsigned>(function->max_dynamic_shared)) {
            std::fprintf(stderr,
                         "[emu driver] cuLaunchKernel %s: %u bytes of dynamic shared memory, above the %d the "
                         "kernel is opted into (cuFuncSetAttribute MAX_DYNAMIC_SHARED_SIZE_BYTES)\n",
                         function->kernel->name, shared_bytes, function->max_dynamic_shared);
            return CUDA_ERROR_INVALID_VALUE;
        }
        kernel = function->kernel;
    }
    count_call(std::string("  kernel ") + kernel->name);  // indented: listed after the driver functions
    if (skip_kernels()) {
        return CUDA_SUCCESS;
    }
    std::lock_guard<std::mutex> lock(launch_mutex());
    if (emu_launch(kernel, gx, gy, gz, bx, by, bz, shared_bytes, params) != 0) {
        return CUDA_ERROR_LAUNCH_FAILED;
    }
    return CUDA_SUCCESS;
}

}  // extern "C"
