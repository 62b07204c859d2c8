// Directed rounding of one float64 operation's result, and Higham's γ_m (docs/math.md §11.3):
// what the certificates (core/ritz_certificate.cpp, the interval, the spectral parts) bound their
// own arithmetic with.
#pragma once

#include <cmath>

namespace torch_ws {

inline constexpr double kFloat64UnitRoundoff = 0x1p-53;

// The neighbour toward ±∞ of a correctly rounded result bounds the exact one.
inline double up(double v) { return std::nextafter(v, HUGE_VAL); }
inline double down(double v) { return std::nextafter(v, -HUGE_VAL); }

// γ_m = m·u / (1 − m·u) (Higham, Accuracy and Stability of Numerical Algorithms, §3.1): a sum of m
// products computed in any order is within γ_m·Σ|terms| of the exact one. Rounded up.
inline double gamma(double m) {
  return up(up(m * kFloat64UnitRoundoff) / down(1 - m * kFloat64UnitRoundoff));
}

}  // namespace torch_ws
