// Minimal binary PPM (P6, 8-bit RGB) and PGM (P5, read as gray -> RGB) reader/writer.
// Self-contained on purpose: the examples need no image library. Convert other formats with
// `python -c "from PIL import Image; Image.open('in.png').convert('RGB').save('in.ppm')"`.
#pragma once

#include <cctype>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace deblur {

struct Image {
  int width = 0;
  int height = 0;
  std::vector<uint8_t> rgb;  // height * width * 3, row-major HWC
};

namespace detail {
inline int read_header_int(std::istream& in, const std::string& path) {
  int c = in.peek();
  while (std::isspace(c) || c == '#') {  // whitespace and comment lines between header fields
    if (c == '#') {
      std::string line;
      std::getline(in, line);
    } else {
      in.get();
    }
    c = in.peek();
  }
  int value = -1;
  if (!(in >> value) || value < 0) throw std::runtime_error(path + ": malformed PPM header");
  return value;
}
}  // namespace detail

inline Image read_ppm(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(path + ": cannot open");
  std::string magic(2, '\0');
  in.read(&magic[0], 2);
  if (magic != "P6" && magic != "P5") throw std::runtime_error(path + ": not a binary PPM/PGM (P6/P5) file");
  Image im;
  im.width = detail::read_header_int(in, path);
  im.height = detail::read_header_int(in, path);
  const int maxval = detail::read_header_int(in, path);
  if (maxval != 255) throw std::runtime_error(path + ": only 8-bit PPM (maxval 255) is supported");
  if (im.width < 1 || im.height < 1 || im.width > 65535 || im.height > 65535)
    throw std::runtime_error(path + ": bad image size");
  in.get();  // the single whitespace byte before the raster
  const size_t pixels = static_cast<size_t>(im.width) * im.height;
  const size_t channels = magic == "P6" ? 3 : 1;
  std::vector<uint8_t> raw(pixels * channels);
  in.read(reinterpret_cast<char*>(raw.data()), static_cast<std::streamsize>(raw.size()));
  if (static_cast<size_t>(in.gcount()) != raw.size()) throw std::runtime_error(path + ": truncated raster");
  if (channels == 3) {
    im.rgb = std::move(raw);
  } else {
    im.rgb.resize(pixels * 3);
    for (size_t i = 0; i < pixels; ++i) im.rgb[3 * i] = im.rgb[3 * i + 1] = im.rgb[3 * i + 2] = raw[i];
  }
  return im;
}

// Writes to `path.tmp` and renames, so a crash never leaves a half-written image.
inline void write_ppm(const std::string& path, const Image& im) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary);
    if (!out) throw std::runtime_error(path + ": cannot write");
    out << "P6\n" << im.width << " " << im.height << "\n255\n";
    out.write(reinterpret_cast<const char*>(im.rgb.data()), static_cast<std::streamsize>(im.rgb.size()));
    if (!out) throw std::runtime_error(path + ": write failed");
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) throw std::runtime_error(path + ": rename failed");
}

}  // namespace deblur
