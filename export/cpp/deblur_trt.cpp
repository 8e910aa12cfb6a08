// deblur_trt: run a DeblurGAN TensorRT 10 or 11 engine (.engine from `python -m export.trt`) on one image.
//
//   deblur_trt deblurgan.engine blurred.ppm sharp.ppm
//
// Same conventions as the Python Deblurrer: RGB scaled to [-1, 1], reflect-padded to a multiple of 4,
// output cropped back and rounded to 8 bits. The engine must come from the float-I/O ONNX export (fp16 and
// bf16 engines take and return float32 too) and must have been built on this GPU model with this TensorRT
// version. Only runtime calls present in both TensorRT 10 and 11 are used: createInferRuntime,
// deserializeCudaEngine, getNbIOTensors/getIOTensorName/getTensorIOMode/getTensorDataType, setInputShape,
// setTensorAddress, enqueueV3. Built only when CMake finds TensorRT and the CUDA toolkit.
#include <NvInfer.h>
#include <cuda_runtime_api.h>

#if !defined(NV_TENSORRT_MAJOR) || NV_TENSORRT_MAJOR < 10 || NV_TENSORRT_MAJOR > 11
#error "deblur_trt supports the TensorRT 10 and 11 headers (NvInferVersion.h names another major version)"
#endif

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <exception>
#include <fstream>
#include <iterator>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "ppm_io.h"

namespace {

class Logger : public nvinfer1::ILogger {
  void log(Severity severity, const char* msg) noexcept override {
    if (severity <= Severity::kWARNING) std::fprintf(stderr, "[TensorRT] %s\n", msg);
  }
};

void check_cuda(cudaError_t status, const char* what) {
  if (status != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(status));
}

struct DeviceBuffer {
  void* ptr = nullptr;
  explicit DeviceBuffer(size_t bytes) { check_cuda(cudaMalloc(&ptr, bytes), "cudaMalloc"); }
  ~DeviceBuffer() { cudaFree(ptr); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
};

int reflect(int i, int n) {  // index into [0, n) with reflect padding (no edge repeat), i < 2n - 1
  return i < n ? i : 2 * (n - 1) - i;
}

// HWC uint8 -> NCHW float in [-1, 1], reflect-padded to (ph, pw)
std::vector<float> to_input(const deblur::Image& im, int ph, int pw) {
  std::vector<float> x(static_cast<size_t>(3) * ph * pw);
  for (int c = 0; c < 3; ++c)
    for (int y = 0; y < ph; ++y)
      for (int xx = 0; xx < pw; ++xx) {
        const size_t src = (static_cast<size_t>(reflect(y, im.height)) * im.width + reflect(xx, im.width)) * 3 + c;
        x[(static_cast<size_t>(c) * ph + y) * pw + xx] = im.rgb[src] / 127.5f - 1.0f;
      }
  return x;
}

deblur::Image to_image(const std::vector<float>& y, int ph, int pw, int height, int width) {
  deblur::Image im;
  im.height = height;
  im.width = width;
  im.rgb.resize(static_cast<size_t>(height) * width * 3);
  for (int r = 0; r < height; ++r)
    for (int col = 0; col < width; ++col)
      for (int c = 0; c < 3; ++c) {
        const float v = std::nearbyint((y[(static_cast<size_t>(c) * ph + r) * pw + col] + 1.0f) * 127.5f);
        im.rgb[(static_cast<size_t>(r) * width + col) * 3 + c] = static_cast<uint8_t>(std::clamp(v, 0.0f, 255.0f));
      }
  return im;
}

std::vector<char> read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(path + ": cannot open");
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: %s model.engine input.ppm output.ppm\n", argv[0]);
    return 2;
  }
  try {
    Logger logger;
    const std::vector<char> blob = read_file(argv[1]);
    std::unique_ptr<nvinfer1::IRuntime> runtime(nvinfer1::createInferRuntime(logger));
    std::unique_ptr<nvinfer1::ICudaEngine> engine(runtime->deserializeCudaEngine(blob.data(), blob.size()));
    if (!engine)
      throw std::runtime_error(std::string(argv[1]) +
                               ": cannot deserialize (built for another GPU or TensorRT version?); rebuild it");
    std::unique_ptr<nvinfer1::IExecutionContext> context(engine->createExecutionContext());
    std::string input, output;
    for (int i = 0; i < engine->getNbIOTensors(); ++i) {
      const char* name = engine->getIOTensorName(i);
      (engine->getTensorIOMode(name) == nvinfer1::TensorIOMode::kINPUT ? input : output) = name;
    }
    if (input.empty() || output.empty()) throw std::runtime_error("engine must have one input and one output");
    if (engine->getTensorDataType(input.c_str()) != nvinfer1::DataType::kFLOAT ||
        engine->getTensorDataType(output.c_str()) != nvinfer1::DataType::kFLOAT)
      throw std::runtime_error("expected float32 I/O (export the ONNX model with --io float)");

    const deblur::Image in = deblur::read_ppm(argv[2]);
    if (in.height < 8 || in.width < 8) throw std::runtime_error(std::string(argv[2]) + ": image smaller than 8x8");
    const int ph = (in.height + 3) / 4 * 4, pw = (in.width + 3) / 4 * 4;
    if (!context->setInputShape(input.c_str(), nvinfer1::Dims4{1, 3, ph, pw}))
      throw std::runtime_error("image size outside the engine's optimization profile (rebuild with larger --max)");

    const std::vector<float> host_in = to_input(in, ph, pw);
    std::vector<float> host_out(host_in.size());
    const size_t bytes = host_in.size() * sizeof(float);
    DeviceBuffer d_in(bytes), d_out(bytes);
    cudaStream_t stream;
    check_cuda(cudaStreamCreate(&stream), "cudaStreamCreate");
    check_cuda(cudaMemcpyAsync(d_in.ptr, host_in.data(), bytes, cudaMemcpyHostToDevice, stream), "copy in");
    // cudaMalloc returns 256-byte aligned memory, the alignment setTensorAddress requires
    if (!context->setTensorAddress(input.c_str(), d_in.ptr) || !context->setTensorAddress(output.c_str(), d_out.ptr))
      throw std::runtime_error("TensorRT refused a tensor address (see the TensorRT log above)");
    if (!context->enqueueV3(stream)) throw std::runtime_error("enqueueV3 failed");
    check_cuda(cudaMemcpyAsync(host_out.data(), d_out.ptr, bytes, cudaMemcpyDeviceToHost, stream), "copy out");
    check_cuda(cudaStreamSynchronize(stream), "synchronize");
    cudaStreamDestroy(stream);
    deblur::write_ppm(argv[3], to_image(host_out, ph, pw, in.height, in.width));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
