// Common definitions of the sglang core: the one exception type and the invariant checks.
//
// Every check failure in the core throws sglang::Error carrying the source location, so the
// Python binding can map all of them to one exception type (sglang.CoreError) with a clear message.
// The core links only the C++ standard library.
#pragma once

#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>

namespace sglang {

/// The single error type raised by the core. `what()` holds "<message> [file:line]".
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& msg) : std::runtime_error(msg) {}
};

namespace detail {

/// Builds the message of a failed check; used only through the SGL_CHECK macros.
class CheckMessage {
 public:
  CheckMessage(const char* file, int line, const char* cond) : file_(file), line_(line) {
    if (cond != nullptr) stream_ << "Check failed: " << cond << ": ";
  }
  template <typename T>
  CheckMessage& operator<<(const T& value) {
    stream_ << value;
    return *this;
  }
  [[noreturn]] void raise() {
    if (file_ != nullptr) stream_ << " [" << file_ << ":" << line_ << "]";
    throw Error(stream_.str());
  }

 private:
  const char* file_;
  int line_;
  std::ostringstream stream_;
};

struct Raiser {
  // `&` binds looser than `<<`, so the whole message is built before raising.
  [[noreturn]] void operator&(CheckMessage& msg) const { msg.raise(); }
  [[noreturn]] void operator&(CheckMessage&& msg) const { msg.raise(); }
};

}  // namespace detail
}  // namespace sglang

/// SGL_CHECK(cond) << "context " << value;  throws sglang::Error when cond is false.
#define SGL_CHECK(cond) \
  if (cond) {           \
  } else                \
    ::sglang::detail::Raiser() & ::sglang::detail::CheckMessage(__FILE__, __LINE__, #cond)

/// SGL_FAIL() << "message";  always throws sglang::Error (a user-facing error, no condition text).
#define SGL_FAIL() ::sglang::detail::Raiser() & ::sglang::detail::CheckMessage(__FILE__, __LINE__, nullptr)

/// SGL_REJECT() << "message";  throws sglang::Error with the message alone: for errors a user
/// caused (a bad request), whose text is shown to them as is.
#define SGL_REJECT() ::sglang::detail::Raiser() & ::sglang::detail::CheckMessage(nullptr, 0, nullptr)
