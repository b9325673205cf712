// plexus/error.hpp: the one exception type plugins and the host throw.
//
// Throw plexus::Error for anything a user can fix (a bad config value, a missing file,
// a shape that does not fit). The host catches it at the plugin boundary, prints
// "error: <what>" and "hint: <hint>", records the failure on the run and exits non-zero.
// Any other exception is reported too, but without a hint, so prefer this one.
#pragma once

#include <stdexcept>
#include <string>

namespace plexus {

class Error : public std::runtime_error {
public:
    // `what` says what went wrong and where (file, key, plugin); `hint` says what to try.
    explicit Error(const std::string& what, std::string hint = {}) : std::runtime_error(what), hint_(std::move(hint)) {}

    const std::string& hint() const noexcept { return hint_; }

private:
    std::string hint_;
};

}  // namespace plexus
