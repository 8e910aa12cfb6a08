// deblur_aoti: run a DeblurGAN AOTInductor package (.pt2 from `python -m export.aoti`) on one image.
//
//   deblur_aoti deblurgan.pt2 blurred.ppm sharp.ppm
//
// Same conventions as the Python Deblurrer: RGB scaled to [-1, 1], reflect-padded to a multiple of 4,
// output cropped back and rounded to 8 bits. The device is the one the package was compiled for.
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/torch.h>

#include <cstdio>
#include <exception>
#include <string>

#include "ppm_io.h"

namespace {

torch::Tensor to_input(const deblur::Image& im, const torch::Device& device) {
  auto hwc = torch::from_blob(const_cast<uint8_t*>(im.rgb.data()), {im.height, im.width, 3}, torch::kUInt8);
  auto x = hwc.permute({2, 0, 1}).unsqueeze(0).to(torch::kFloat32).div(127.5).sub(1.0);
  const int64_t pad_h = (4 - im.height % 4) % 4, pad_w = (4 - im.width % 4) % 4;
  if (pad_h || pad_w) {  // reflect padding on the bottom/right, cropped off after the model
    namespace F = torch::nn::functional;
    x = F::pad(x, F::PadFuncOptions({0, pad_w, 0, pad_h}).mode(torch::kReflect));
  }
  return x.contiguous().to(device);
}

deblur::Image to_image(const torch::Tensor& y, int height, int width) {
  auto out = y.to(torch::kCPU, torch::kFloat32)
                 .index({0, torch::indexing::Slice(), torch::indexing::Slice(0, height),
                         torch::indexing::Slice(0, width)})
                 .add(1.0)
                 .mul(127.5)
                 .round()
                 .clamp(0, 255)
                 .to(torch::kUInt8)
                 .permute({1, 2, 0})
                 .contiguous();
  deblur::Image im;
  im.height = height;
  im.width = width;
  im.rgb.assign(out.data_ptr<uint8_t>(), out.data_ptr<uint8_t>() + out.numel());
  return im;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: %s model.pt2 input.ppm output.ppm\n", argv[0]);
    return 2;
  }
  try {
    torch::NoGradGuard no_grad;
    torch::inductor::AOTIModelPackageLoader loader(argv[1]);
    auto meta = loader.get_metadata();
    const std::string dev = meta.count("deblurgan.device") ? meta["deblurgan.device"] : meta["AOTI_DEVICE_KEY"];
    const torch::Device device(dev.empty() ? "cpu" : dev);
    const deblur::Image in = deblur::read_ppm(argv[2]);
    if (in.height < 8 || in.width < 8) throw std::runtime_error(std::string(argv[2]) + ": image smaller than 8x8");
    auto outputs = loader.run({to_input(in, device)});
    deblur::write_ppm(argv[3], to_image(outputs.at(0), in.height, in.width));
  } catch (const std::exception& e) {
    std::string msg = e.what();
    std::fprintf(stderr, "error: %s\n", msg.substr(0, msg.find('\n')).c_str());
    return 1;
  }
  return 0;
}
