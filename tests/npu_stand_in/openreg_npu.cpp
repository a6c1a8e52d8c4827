// A real PrivateUse1 device for tests: memory is host memory, kernels are PyTorch's CPU kernels.
//
// Tensors get their own device type (renamed to "npu" from Python), device index, allocator and
// dispatch key, so device-generic code (module.to, autograd, optimizers, autocast, serialization)
// runs for real. Only the ops that must touch memory or metadata directly have kernels here; every
// other op runs through a boxed fallback that computes on CPU tensors and copies results back.

#include <ATen/EmptyTensor.h>
#include <ATen/autocast_mode.h>
#include <ATen/core/Tensor.h>
#include <ATen/detail/PrivateUse1HooksInterface.h>
#include <ATen/native/CPUFallback.h>
#include <ATen/native/Resize.h>
#include <ATen/ops/_local_scalar_dense.h>
#include <ATen/ops/_reshape_alias_native.h>
#include <ATen/ops/as_strided_native.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/resize_native.h>
#include <ATen/ops/set_native.h>
#include <ATen/ops/unfold_native.h>
#include <ATen/ops/view_as_complex_native.h>
#include <ATen/ops/view_as_real_native.h>
#include <ATen/ops/view_native.h>
#include <c10/core/Allocator.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <c10/core/impl/alloc_cpu.h>
#include <torch/library.h>

#include <array>
#include <atomic>
#include <string>
#include <unordered_set>

namespace {

constexpr c10::DeviceIndex kDeviceCount = 2;
constexpr auto kKey = c10::DispatchKey::PrivateUse1;

// Which device new memory belongs to; per thread like a real runtime's current device.
thread_local c10::DeviceIndex current_device = 0;
std::array<std::atomic<int64_t>, kDeviceCount> allocated_bytes{};
std::array<std::atomic<int64_t>, kDeviceCount> peak_bytes{};

void check_index(c10::DeviceIndex index) {
  TORCH_CHECK(index >= 0 && index < kDeviceCount, "npu device index ", static_cast<int>(index),
              " out of range: this machine has ", static_cast<int>(kDeviceCount), " npu devices");
}

// ---------------------------------------------------------------- memory

struct Block {
  void* ptr;
  size_t bytes;
  c10::DeviceIndex device;
};

void free_block(void* ctx) {
  auto* block = static_cast<Block*>(ctx);
  allocated_bytes[block->device] -= static_cast<int64_t>(block->bytes);
  c10::free_cpu(block->ptr);
  delete block;
}

// Host memory tagged with the current device, with per-device byte counts for memory_stats.
struct HostBackedAllocator final : c10::Allocator {
  c10::DataPtr allocate(size_t bytes) override {
    const c10::DeviceIndex device = current_device;
    void* ptr = bytes ? c10::alloc_cpu(bytes) : nullptr;
    const int64_t now = allocated_bytes[device] += static_cast<int64_t>(bytes);
    int64_t peak = peak_bytes[device].load();
    while (now > peak && !peak_bytes[device].compare_exchange_weak(peak, now)) {
    }
    return {ptr, new Block{ptr, bytes, device}, &free_block, c10::Device(c10::DeviceType::PrivateUse1, device)};
  }

  void copy_data(void* dest, const void* src, size_t count) const override { default_copy_data(dest, src, count); }
};

HostBackedAllocator allocator;
REGISTER_ALLOCATOR(c10::DeviceType::PrivateUse1, &allocator);

// ---------------------------------------------------------------- device guard, streams, events

struct GuardImpl final : c10::impl::DeviceGuardImplInterface {
  c10::DeviceType type() const override { return c10::DeviceType::PrivateUse1; }

  c10::Device exchangeDevice(c10::Device device) const override {
    const c10::Device old = getDevice();
    setDevice(device);
    return old;
  }

  c10::Device getDevice() const override { return {c10::DeviceType::PrivateUse1, current_device}; }

  void setDevice(c10::Device device) const override {
    TORCH_CHECK(device.is_privateuseone(), "expected an npu device, got ", device);
    const c10::DeviceIndex index = device.has_index() ? device.index() : 0;
    check_index(index);
    current_device = index;
  }

  void uncheckedSetDevice(c10::Device device) const noexcept override {
    current_device = device.has_index() ? device.index() : 0;
  }

  c10::Stream getStream(c10::Device device) const override { return c10::Stream(c10::Stream::DEFAULT, device); }
  c10::Stream getDefaultStream(c10::Device device) const override { return c10::Stream(c10::Stream::DEFAULT, device); }
  c10::Stream getNewStream(c10::Device device, int /*priority*/) const override {
    return c10::Stream(c10::Stream::DEFAULT, device);
  }
  c10::Stream exchangeStream(c10::Stream stream) const override { return stream; }

  // Work is synchronous, so events are always complete.
  void record(void** event, const c10::Stream& /*stream*/, const c10::DeviceIndex /*index*/,
              const c10::EventFlag /*flag*/) const override {
    *event = reinterpret_cast<void*>(1);
  }
  void block(void* /*event*/, const c10::Stream& /*stream*/) const override {}
  bool queryEvent(void* /*event*/) const override { return true; }
  void destroyEvent(void* /*event*/, const c10::DeviceIndex /*index*/) const noexcept override {}
  void synchronizeEvent(void* /*event*/) const override {}
  bool queryStream(const c10::Stream& /*stream*/) const override { return true; }
  void synchronizeStream(const c10::Stream& /*stream*/) const override {}
  void synchronizeDevice(const c10::DeviceIndex /*index*/) const override {}
  void recordDataPtrOnStream(const c10::DataPtr& /*data*/, const c10::Stream& /*stream*/) const override {}
  double elapsedTime(void* /*start*/, void* /*end*/, const c10::DeviceIndex /*index*/) const override {
    return 0.0;
  }

  c10::DeviceIndex deviceCount() const noexcept override { return kDeviceCount; }
};

C10_REGISTER_GUARD_IMPL(PrivateUse1, GuardImpl);

// What generic ATen code (autograd engine, pinning checks, accelerator queries) asks of the backend.
struct Hooks final : at::PrivateUse1HooksInterface {
  bool isBuilt() const override { return true; }
  bool isAvailable() const override { return true; }
  bool hasPrimaryContext(c10::DeviceIndex /*index*/) const override { return true; }
  void init() const override {}
  c10::DeviceIndex deviceCount() const override { return kDeviceCount; }
  void setCurrentDevice(c10::DeviceIndex index) const override {
    check_index(index);
    current_device = index;
  }
  c10::DeviceIndex getCurrentDevice() const override { return current_device; }
  c10::DeviceIndex exchangeDevice(c10::DeviceIndex index) const override {
    const c10::DeviceIndex old = current_device;
    setCurrentDevice(index);
    return old;
  }
  c10::DeviceIndex maybeExchangeDevice(c10::DeviceIndex index) const override { return exchangeDevice(index); }
  // host memory needs no pinning: "pinned" buffers (non_blocking copies to the CPU) are plain CPU memory
  bool isPinnedPtr(const void* /*data*/) const override { return false; }
  c10::Allocator* getPinnedMemoryAllocator() const override { return c10::GetCPUAllocator(); }
  at::Device getDeviceFromPtr(void* /*data*/) const override {
    return {c10::DeviceType::PrivateUse1, current_device};
  }
  void resizePrivateUse1Bytes(const c10::Storage& storage, size_t bytes) const override {
    at::native::resize_bytes_cpu(storage.unsafeGetStorageImpl(), bytes);
  }
};

const bool hooks_registered = [] {
  static Hooks hooks;
  at::RegisterPrivateUse1HooksInterface(&hooks);
  return true;
}();

// ---------------------------------------------------------------- kernels that touch memory or metadata

c10::DeviceIndex index_of(std::optional<c10::Device> device) {
  return device && device->has_index() ? device->index() : current_device;
}

at::Tensor empty_memory_format(c10::IntArrayRef size, std::optional<c10::ScalarType> dtype,
                               std::optional<c10::Layout> /*layout*/, std::optional<c10::Device> device,
                               std::optional<bool> /*pin_memory*/, std::optional<c10::MemoryFormat> memory_format) {
  c10::DeviceGuard guard(c10::Device(c10::DeviceType::PrivateUse1, index_of(device)));
  return at::detail::empty_generic(size, &allocator, c10::DispatchKeySet(kKey),
                                   c10::dtype_or_default(dtype), memory_format);
}

at::Tensor empty_strided(c10::IntArrayRef size, c10::IntArrayRef stride, std::optional<c10::ScalarType> dtype,
                         std::optional<c10::Layout> /*layout*/, std::optional<c10::Device> device,
                         std::optional<bool> /*pin_memory*/) {
  c10::DeviceGuard guard(c10::Device(c10::DeviceType::PrivateUse1, index_of(device)));
  return at::detail::empty_strided_generic(size, stride, &allocator, c10::DispatchKeySet(kKey),
                                           c10::dtype_or_default(dtype));
}

// A CPU tensor over the same bytes (views, strides and offset kept), for copies and scalar reads.
at::Tensor host_alias(const at::Tensor& t) {
  if (t.is_cpu()) {
    return t;
  }
  return at::from_blob(t.data_ptr(), t.sizes(), t.strides(), t.options().device(c10::kCPU));
}

at::Tensor copy_from(const at::Tensor& self, const at::Tensor& dst, bool /*non_blocking*/) {
  TORCH_CHECK(self.sizes() == dst.sizes(), "npu copy between different shapes: ", self.sizes(), " and ",
              dst.sizes());
  if (self.numel() == 0) {
    return dst;
  }
  // conj/neg bits are lazy flags on the tensor, not in memory: resolve them before aliasing raw bytes
  const at::Tensor src = self.is_conj() || self.is_neg() ? self.resolve_conj().resolve_neg() : self;
  host_alias(dst).copy_(host_alias(src));
  return dst;
}

at::Tensor copy_from_and_resize(const at::Tensor& self, const at::Tensor& dst) {
  if (dst.sizes() != self.sizes()) {
    dst.resize_(self.sizes());
  }
  return copy_from(self, dst, false);
}

const at::Tensor& resize(const at::Tensor& self, c10::IntArrayRef size,
                         std::optional<c10::MemoryFormat> memory_format) {
  // host memory: the CPU resize grows the storage through the storage's own (this) allocator
  c10::DeviceGuard guard(self.device());
  return at::native::resize_(self, size, memory_format);
}

at::Tensor& set_storage(at::Tensor& self, c10::Storage source, int64_t offset, c10::IntArrayRef size,
                        c10::IntArrayRef stride) {
  return at::native::set_storage_cpu_(self, std::move(source), offset, size, stride);
}

at::Tensor& set_whole_storage(at::Tensor& self, c10::Storage source) {
  const int64_t numel = static_cast<int64_t>(source.nbytes() / self.dtype().itemsize());
  return set_storage(self, std::move(source), 0, {numel}, {});
}

c10::Scalar local_scalar_dense(const at::Tensor& self) { return at::_local_scalar_dense(host_alias(self)); }

TORCH_LIBRARY_IMPL(aten, PrivateUse1, m) {
  m.impl("empty.memory_format", empty_memory_format);
  m.impl("empty_strided", empty_strided);
  m.impl("_copy_from", copy_from);
  m.impl("_copy_from_and_resize", copy_from_and_resize);
  m.impl("resize_", resize);
  m.impl("set_.source_Storage_storage_offset", set_storage);
  m.impl("set_.source_Storage", set_whole_storage);
  m.impl("_local_scalar_dense", local_scalar_dense);
  // views must alias: PyTorch's device-generic implementations only rewrite sizes, strides and offset
  m.impl("view", at::native::view);
  m.impl("as_strided", at::native::as_strided_tensorimpl);
  m.impl("_reshape_alias", at::native::_reshape_alias);
  m.impl("unfold", at::native::unfold);
  m.impl("view_as_real", at::native::view_as_real);
  m.impl("view_as_complex", at::native::view_as_complex);
}

// Every other op: inputs are copied to CPU, PyTorch's CPU kernel runs, outputs are copied back.
// error_on_views makes a view op that slipped through fail loudly instead of silently copying.
void run_on_cpu(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  at::native::cpu_fallback(op, stack, /*error_on_views=*/true);
}

TORCH_LIBRARY_IMPL(_, PrivateUse1, m) { m.fallback(torch::CppFunction::makeFromBoxedFunction<&run_on_cpu>()); }

// Convolutions pick a backend-specific kernel below `convolution` and end in `*_overrideable` for any
// device but CPU/CUDA: run the whole op (and its backward) on CPU instead.
TORCH_LIBRARY_IMPL(aten, PrivateUse1, m) {
  m.impl("convolution", torch::CppFunction::makeFromBoxedFunction<&run_on_cpu>());
  m.impl("convolution_backward", torch::CppFunction::makeFromBoxedFunction<&run_on_cpu>());
}

// ---------------------------------------------------------------- autocast("npu")

// The ops autocast runs in the low precision dtype on this device (matmuls, convolutions, attention).
const std::unordered_set<std::string>& lower_precision_ops() {
  static const std::unordered_set<std::string> ops = {
      "aten::linear", "aten::matmul", "aten::mm", "aten::bmm", "aten::addmm", "aten::baddbmm",
      "aten::conv1d", "aten::conv2d", "aten::conv3d", "aten::scaled_dot_product_attention"};
  return ops;
}

void autocast_fallback(const c10::OperatorHandle& op, c10::DispatchKeySet keys, torch::jit::Stack* stack) {
  const auto& schema = op.schema();
  if (lower_precision_ops().count(schema.name())) {
    const c10::ScalarType dtype = at::autocast::get_autocast_dtype(c10::DeviceType::PrivateUse1);
    const size_t n = schema.arguments().size();
    for (size_t i = stack->size() - n; i < stack->size(); ++i) {
      auto& value = (*stack)[i];
      if (value.isTensor()) {
        const at::Tensor& t = value.toTensor();
        if (t.is_floating_point() && t.device().is_privateuseone() && t.scalar_type() != dtype) {
          value = t.to(dtype);
        }
      }
    }
  }
  op.redispatchBoxed(keys & c10::DispatchKeySet(c10::DispatchKeySet::FULL_AFTER, c10::DispatchKey::AutocastPrivateUse1),
                     stack);
}

TORCH_LIBRARY_IMPL(_, AutocastPrivateUse1, m) {
  m.fallback(torch::CppFunction::makeFromBoxedFunction<&autocast_fallback>());
}

// ---------------------------------------------------------------- runtime calls for the Python module

void set_device(int64_t index) {
  check_index(static_cast<c10::DeviceIndex>(index));
  current_device = static_cast<c10::DeviceIndex>(index);
}

int64_t get_device() { return current_device; }

int64_t device_count() { return kDeviceCount; }

std::vector<int64_t> memory_counts(int64_t index) {
  check_index(static_cast<c10::DeviceIndex>(index));
  return {allocated_bytes[index].load(), peak_bytes[index].load()};
}

TORCH_LIBRARY(openreg_npu, m) {
  m.def("set_device(int index) -> ()", &set_device);
  m.def("current_device() -> int", &get_device);
  m.def("device_count() -> int", &device_count);
  m.def("memory_counts(int index) -> int[]", &memory_counts);
}

}  // namespace
