// Screenshot: read the back buffer and write a PNG (stb_image_write from libstb).
#include <GLFW/glfw3.h>
#include <stb_image_write.h>

#include <vector>

#include "app.hpp"

namespace inferscope::viewer {

bool write_screenshot_png(const std::string& path, int width, int height, std::string& error) {
  if (width <= 0 || height <= 0) {
    error = "empty framebuffer";
    return false;
  }
  std::vector<unsigned char> pixels(static_cast<size_t>(width) * height * 3);
  glPixelStorei(GL_PACK_ALIGNMENT, 1);
  glReadBuffer(GL_BACK);
  glReadPixels(0, 0, width, height, GL_RGB, GL_UNSIGNED_BYTE, pixels.data());
  // OpenGL's origin is bottom-left; PNG rows go top-down.
  stbi_flip_vertically_on_write(1);
  if (!stbi_write_png(path.c_str(), width, height, 3, pixels.data(), width * 3)) {
    error = "cannot write " + path;
    return false;
  }
  return true;
}

}  // namespace inferscope::viewer
