// JSON from files loraq did not write (safetensors headers, shard indexes): parsed with a bounded
// depth and no repeated keys. nlohmann silently keeps the last of two equal keys, and a file that
// names one tensor twice is ambiguous; refusing deep nesting inside the parse callback bounds the
// work before a 100 MB "[[[[..." is ever built.
#pragma once

#include <fmt/format.h>

#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <string_view>
#include <vector>

namespace loraq::io {

// `kind` names the text in messages ("header", "index"); `fail(message)` must throw.
template <class Fail>
nlohmann::json parse_strict_json(std::string_view text, int max_depth, std::string_view kind, Fail&& fail) {
  using json = nlohmann::json;
  std::vector<std::set<std::string>> keys;  // one set per open object
  const json::parser_callback_t check = [&](int depth, json::parse_event_t event, json& parsed) {
    if (depth > max_depth) fail(fmt::format("{} JSON nests deeper than {} levels", kind, max_depth));
    switch (event) {
      case json::parse_event_t::object_start: keys.emplace_back(); break;
      case json::parse_event_t::object_end: keys.pop_back(); break;
      case json::parse_event_t::key: {
        const std::string& key = parsed.get_ref<const std::string&>();
        if (!keys.back().insert(key).second) fail(fmt::format("{} JSON repeats the key \"{}\"", kind, key));
        break;
      }
      case json::parse_event_t::array_start:
      case json::parse_event_t::array_end:
      case json::parse_event_t::value:
        break;
    }
    return true;
  };
  try {
    return json::parse(text.begin(), text.end(), check);
  } catch (const json::exception& e) {
    fail(fmt::format("{} is not valid JSON: {}", kind, e.what()));
  }
  return {};  // not reached: fail throws
}

}  // namespace loraq::io
