// The element table and the enum-to-codec dispatch of element conversions.
#include <array>

#include "element_codec.hpp"
#include "loraq/element.hpp"

namespace loraq {
namespace {

template <class Codec>
ElementInfo describe(Element e, std::string_view name) {
  const float smallest = e == Element::e8m0 ? Codec::decode(0) : Codec::decode(1);
  return ElementInfo{e,
                     name,
                     Codec::bits,
                     static_cast<float>(Codec::max_value()),
                     smallest,
                     Codec::emax,
                     Codec::has_inf,
                     Codec::has_nan};
}

const std::array<ElementInfo, kElementCount> kElements = {
    describe<detail::E2M1>(Element::e2m1, "e2m1"),
    describe<detail::E2M3>(Element::e2m3, "e2m3"),
    describe<detail::E3M2>(Element::e3m2, "e3m2"),
    describe<detail::E4M3>(Element::e4m3, "e4m3"),
    describe<detail::E5M2>(Element::e5m2, "e5m2"),
    describe<detail::MxInt8>(Element::mx_int8, "mx_int8"),
    describe<detail::MxInt4>(Element::mx_int4, "mx_int4"),
    describe<detail::Int4>(Element::int4, "int4"),
    describe<detail::Int8>(Element::int8, "int8"),
    describe<detail::E8M0>(Element::e8m0, "e8m0"),
    describe<detail::FP16>(Element::fp16, "fp16"),
    describe<detail::BF16>(Element::bf16, "bf16"),
};

}  // namespace

const ElementInfo& element_info(Element e) { return kElements[static_cast<std::size_t>(e)]; }
std::span<const ElementInfo> all_elements() { return kElements; }

std::uint32_t encode(Element e, float x, Rounding rounding) {
  return detail::with_codec(e, [&](auto codec) { return decltype(codec)::encode(x, rounding); });
}

float decode(Element e, std::uint32_t code) {
  return detail::with_codec(e, [&](auto codec) { return decltype(codec)::decode(code); });
}

float round_to_element(Element e, float x, Rounding rounding) { return decode(e, encode(e, x, rounding)); }

}  // namespace loraq
