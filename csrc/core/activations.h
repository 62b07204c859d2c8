// The one table of activations φ (docs/math.md §3): names, parsing, and φ, φ', φ'', φ'''.
// ReLU and LeakyReLU are piecewise linear: φ'' = φ''' = 0 wherever a ≠ 0, so the closed form is
// their almost-everywhere Hessian (docs/math.md §3).
//
// The formulas are written once, as a template over the value type: at::Tensor (elementwise, any
// device; the sample-space engines) and double (one value at a time; the parameter-space engine's
// fused loops). Each type supplies the few primitives below.
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <cmath>
#include <string>
#include <string_view>

namespace torch_ws {

enum class Activation { Linear, Sigmoid, Tanh, Softplus, Gelu, Silu, GeluTanh, Relu, LeakyRelu };

// LeakyReLU's slope for a < 0: nn.LeakyReLU's default, the one "leaky_relu" means.
inline constexpr double kLeakyReluSlope = 0.01;
// nn.Softplus's default threshold: above it the module computes the identity.
inline constexpr double kSoftplusThreshold = 20;

struct ActivationEntry {
  Activation activation;
  const char* name;
};

// Single source of truth for the supported names: parsing and error messages read it.
inline constexpr std::array<ActivationEntry, 9> kActivations = {{
    {Activation::Linear, "linear"},
    {Activation::Sigmoid, "sigmoid"},
    {Activation::Tanh, "tanh"},
    {Activation::Softplus, "softplus"},
    {Activation::Gelu, "gelu"},
    {Activation::Silu, "silu"},
    {Activation::GeluTanh, "gelu_tanh"},
    {Activation::Relu, "relu"},
    {Activation::LeakyRelu, "leaky_relu"},
}};

// "linear, sigmoid, ..." for error messages.
std::string supported_activations();

// Raises c10::Error, its message starting with `op`, naming the supported activations when
// `name` is not one of them.
Activation parse_activation(std::string_view op, std::string_view name);
// The table's name of an activation.
const char* activation_name(Activation activation);

// The primitives the table needs, for each value type.
namespace primitives {
inline at::Tensor sigmoid(const at::Tensor& a) { return at::sigmoid(a); }
inline at::Tensor tanh(const at::Tensor& a) { return at::tanh(a); }
inline at::Tensor erfc(const at::Tensor& a) { return at::erfc(a); }
inline at::Tensor exp(const at::Tensor& a) { return at::exp(a); }
inline at::Tensor softplus(const at::Tensor& a) { return at::softplus(a); }
inline at::Tensor constant_like(const at::Tensor& a, double value) {
  return at::full_like(a, value);
}
// 1 where a > 0, else `slope` (at a = 0 too, as autograd's ReLU and LeakyReLU backward).
inline at::Tensor step(const at::Tensor& a, double slope) {
  return (a > 0).to(a.scalar_type()) * (1 - slope) + slope;
}
// 1 where a <= threshold (and where a is NaN), else 0.
inline at::Tensor at_most(const at::Tensor& a, double threshold) {
  return 1 - (a > threshold).to(a.scalar_type());
}

inline double sigmoid(double a) { return 1 / (1 + std::exp(-a)); }  // exp overflow → 0, no NaN
inline double tanh(double a) { return std::tanh(a); }
inline double erfc(double a) { return std::erfc(a); }
inline double exp(double a) { return std::exp(a); }
// As at::softplus (β = 1, threshold 20): the identity above the threshold.
inline double softplus(double a) { return a > kSoftplusThreshold ? a : std::log1p(std::exp(a)); }
inline double constant_like(double, double value) { return value; }
inline double step(double a, double slope) { return a > 0 ? 1.0 : slope; }
inline double at_most(double a, double threshold) { return a > threshold ? 0.0 : 1.0; }
}  // namespace primitives

// φ and its derivatives up to φ''' evaluated at `a`. Only the first `num_derivatives + 1`
// entries are filled (the forward needs φ..φ'', the backward φ''' too).
template <typename T>
struct ActivationValues {
  T phi0, phi1, phi2, phi3;
};

template <typename T>
ActivationValues<T> activation_values(Activation activation, const T& a, int num_derivatives) {
  namespace fn = primitives;  // qualified: <cmath> also declares ::tanh(double) and the like
  const bool need2 = num_derivatives >= 2, need3 = num_derivatives >= 3;
  ActivationValues<T> out;
  // Logistic family. With σ = sigmoid(a) and p = σ(1 − σ) = σ'(a):
  //   σ'' = p (1 − 2σ),  σ''' = p (1 − 6σ + 6σ²).
  // p is computed as σ(a)·σ(−a), which keeps its relative accuracy when σ saturates.
  auto logistic = [&](T& sig, T& p) {
    sig = fn::sigmoid(a);
    p = sig * fn::sigmoid(-a);
  };
  T sig{}, p{};
  switch (activation) {
    case Activation::Linear: {
      out.phi0 = a;
      out.phi1 = fn::constant_like(a, 1);
      if (need2) out.phi2 = fn::constant_like(a, 0);
      if (need3) out.phi3 = fn::constant_like(a, 0);
      break;
    }
    case Activation::Sigmoid: {
      logistic(sig, p);
      out.phi0 = sig;
      out.phi1 = p;
      if (need2) out.phi2 = p * (1 - 2 * sig);
      if (need3) out.phi3 = p * (1 - 6 * sig + 6 * sig * sig);
      break;
    }
    case Activation::Tanh: {
      // q = 1 − τ²:  φ'' = −2τq,  φ''' = q (6τ² − 2). q is computed as 4σ(2a)σ(−2a) (= (1 + τ)
      // (1 − τ)), not 1 − τ², which cancels to a few bits (float32) or to 0 once τ rounds to ±1.
      T tau = fn::tanh(a);
      T q = 4 * (fn::sigmoid(2 * a) * fn::sigmoid(-2 * a));
      out.phi0 = tau;
      out.phi1 = q;
      if (need2) out.phi2 = -2 * tau * q;
      if (need3) out.phi3 = q * (6 * tau * tau - 2);
      break;
    }
    case Activation::Softplus: {
      // softplus' = σ, so the derivatives are the logistic ones shifted by one order. Above the
      // threshold nn.Softplus is the identity (φ = a, φ' = 1, φ'' = φ''' = 0, as its autograd
      // has it), and these are the derivatives of the function the module computes: σ(a) there
      // differs from 1 by e⁻²⁰ ≈ 2·10⁻⁹, which a float64 Hessian shows (docs/math.md §3).
      logistic(sig, p);
      const T smooth = fn::at_most(a, kSoftplusThreshold);  // 1 or 0, exactly
      out.phi0 = fn::softplus(a);
      out.phi1 = smooth * sig + (1 - smooth);
      if (need2) out.phi2 = smooth * p;
      if (need3) out.phi3 = smooth * (p * (1 - 2 * sig));
      break;
    }
    case Activation::Gelu: {
      // φ = aΦ(a); with ϕ the normal density: φ' = Φ + aϕ, φ'' = (2 − a²)ϕ, φ''' = (a³ − 4a)ϕ.
      // Φ(a) = erfc(−a/√2)/2, which keeps its relative accuracy in the lower tail, where
      // (1 + erf(a/√2))/2 cancels (to 0 below a ≈ −8.3 in float64).
      T cdf = 0.5 * fn::erfc(-a * M_SQRT1_2);
      T pdf = fn::exp(-0.5 * a * a) * (0.5 * M_2_SQRTPI * M_SQRT1_2);
      out.phi0 = a * cdf;
      out.phi1 = cdf + a * pdf;
      if (need2) out.phi2 = (2 - a * a) * pdf;
      if (need3) out.phi3 = (a * a * a - 4 * a) * pdf;
      break;
    }
    case Activation::Silu: {
      // φ = aσ: φ' = σ(1 + a(1 − σ)), φ'' = p(2 + a(1 − 2σ)),
      // φ''' = p((1 − 2σ)(3 + a(1 − 2σ)) − 2ap).
      logistic(sig, p);
      T one_m_2sig = 1 - 2 * sig;
      out.phi0 = a * sig;
      out.phi1 = sig + a * p;
      if (need2) out.phi2 = p * (2 + a * one_m_2sig);
      if (need3) out.phi3 = p * (one_m_2sig * (3 + a * one_m_2sig) - 2 * a * p);
      break;
    }
    case Activation::Relu:
    case Activation::LeakyRelu: {
      // φ = a·φ'(a) with φ' = 1 for a > 0 and the slope (0, or 0.01 for LeakyReLU) elsewhere.
      out.phi1 = fn::step(a, activation == Activation::Relu ? 0.0 : kLeakyReluSlope);
      out.phi0 = a * out.phi1;
      if (need2) out.phi2 = fn::constant_like(a, 0);
      if (need3) out.phi3 = fn::constant_like(a, 0);
      break;
    }
    case Activation::GeluTanh: {
      // φ = a·g with g = (1 + tanh u)/2, u = k(a + 0.044715a³), k = √(2/π), so
      // φ' = g + ag', φ'' = 2g' + ag'', φ''' = 3g'' + ag'''. With T = tanh u, S = 1 − T²:
      //   g' = S u'/2,  g'' = S (u'' − 2T u'²)/2,
      //   g''' = S (u''' − 6T u'u'' + 4T²u'³ − 2S u'³)/2.
      constexpr double kC = 0.044715;
      const double k = std::sqrt(2.0 / M_PI);
      T u = k * (a + kC * a * a * a);
      T du = k * (1 + 3 * kC * a * a);
      T d2u = (6 * kC * k) * a;
      const double d3u = 6 * kC * k;
      // S = 1 − T² = 4σ(2u)σ(−2u) and g = σ(2u): cancellation-free where tanh u saturates.
      T th = fn::tanh(u);
      T S = 4 * (fn::sigmoid(2 * u) * fn::sigmoid(-2 * u));
      T g = fn::sigmoid(2 * u);
      T dg = 0.5 * S * du;
      out.phi0 = a * g;
      out.phi1 = g + a * dg;
      if (need2 || need3) {
        T d2g = 0.5 * S * (d2u - 2 * th * du * du);
        if (need2) out.phi2 = 2 * dg + a * d2g;
        if (need3) {
          T du3 = du * du * du;
          T d3g = 0.5 * S * (d3u - 6 * th * du * d2u + 4 * th * th * du3 - 2 * S * du3);
          out.phi3 = 3 * d2g + a * d3g;
        }
      }
      break;
    }
  }
  return out;
}

}  // namespace torch_ws
