#include "activations.h"

#include <c10/util/Exception.h>

#include <cmath>

namespace torch_ws {

std::string supported_activations() {
  std::string names;
  for (const auto& entry : kActivations) {
    if (!names.empty()) names += ", ";
    names += entry.name;
  }
  return names;
}

Activation parse_activation(std::string_view name) {
  for (const auto& entry : kActivations) {
    if (name == entry.name) return entry.activation;
  }
  TORCH_CHECK(false, "torch_ws: unknown activation '", std::string(name), "'; expected one of: ",
              supported_activations(),
              " (ReLU and other non-smooth activations have no second derivative, so the closed "
              "form does not apply)");
}

namespace {

// Logistic family. With σ = sigmoid(a) and p = σ(1 − σ) = σ'(a):
//   σ'' = p (1 − 2σ),  σ''' = p (1 − 6σ + 6σ²).
// p is computed as σ(a)·σ(−a), which keeps its relative accuracy when σ saturates.
struct Logistic {
  at::Tensor sig, p;
  explicit Logistic(const at::Tensor& a) : sig(at::sigmoid(a)), p(sig * at::sigmoid(-a)) {}
  at::Tensor d2() const { return p * (1 - 2 * sig); }
  at::Tensor d3() const { return p * (1 - 6 * sig + 6 * sig * sig); }
};

}  // namespace

ActivationValues activation_values(Activation activation, const at::Tensor& a, int num_derivatives) {
  TORCH_INTERNAL_ASSERT(num_derivatives >= 0 && num_derivatives <= 3);
  const bool need2 = num_derivatives >= 2, need3 = num_derivatives >= 3;
  ActivationValues out;
  switch (activation) {
    case Activation::Linear: {
      out.phi0 = a;
      out.phi1 = at::ones_like(a);
      if (need2) out.phi2 = at::zeros_like(a);
      if (need3) out.phi3 = at::zeros_like(a);
      break;
    }
    case Activation::Sigmoid: {
      Logistic l(a);
      out.phi0 = l.sig;
      out.phi1 = l.p;
      if (need2) out.phi2 = l.d2();
      if (need3) out.phi3 = l.d3();
      break;
    }
    case Activation::Tanh: {
      // q = 1 − τ²:  φ'' = −2τq,  φ''' = q (6τ² − 2)
      auto tau = at::tanh(a);
      auto q = 1 - tau * tau;
      out.phi0 = tau;
      out.phi1 = q;
      if (need2) out.phi2 = -2 * tau * q;
      if (need3) out.phi3 = q * (6 * tau * tau - 2);
      break;
    }
    case Activation::Softplus: {
      // softplus' = σ, so the derivatives are the logistic ones shifted by one order.
      Logistic l(a);
      out.phi0 = at::softplus(a);
      out.phi1 = l.sig;
      if (need2) out.phi2 = l.p;
      if (need3) out.phi3 = l.d2();
      break;
    }
    case Activation::Gelu: {
      // φ = aΦ(a); with ϕ the normal density: φ' = Φ + aϕ, φ'' = (2 − a²)ϕ, φ''' = (a³ − 4a)ϕ.
      auto cdf = 0.5 * (1 + at::erf(a * M_SQRT1_2));
      auto pdf = at::exp(-0.5 * a * a) * (0.5 * M_2_SQRTPI * M_SQRT1_2);
      out.phi0 = a * cdf;
      out.phi1 = cdf + a * pdf;
      if (need2) out.phi2 = (2 - a * a) * pdf;
      if (need3) out.phi3 = (a * a * a - 4 * a) * pdf;
      break;
    }
    case Activation::Silu: {
      // φ = aσ: φ' = σ(1 + a(1 − σ)), φ'' = p(2 + a(1 − 2σ)),
      // φ''' = p((1 − 2σ)(3 + a(1 − 2σ)) − 2ap).
      Logistic l(a);
      auto one_m_2sig = 1 - 2 * l.sig;
      out.phi0 = a * l.sig;
      out.phi1 = l.sig + a * l.p;
      if (need2) out.phi2 = l.p * (2 + a * one_m_2sig);
      if (need3) out.phi3 = l.p * (one_m_2sig * (3 + a * one_m_2sig) - 2 * a * l.p);
      break;
    }
    case Activation::GeluTanh: {
      // φ = a·g with g = (1 + tanh u)/2, u = k(a + 0.044715a³), k = √(2/π), so
      // φ' = g + ag', φ'' = 2g' + ag'', φ''' = 3g'' + ag'''. With T = tanh u, S = 1 − T²:
      //   g' = S u'/2,  g'' = S (u'' − 2T u'²)/2,
      //   g''' = S (u''' − 6T u'u'' + 4T²u'³ − 2S u'³)/2.
      constexpr double kC = 0.044715;
      const double k = std::sqrt(2.0 / M_PI);
      auto u = k * (a + kC * a * a * a);
      auto du = k * (1 + 3 * kC * a * a);
      auto d2u = (6 * kC * k) * a;
      const double d3u = 6 * kC * k;
      auto T = at::tanh(u);
      auto S = 1 - T * T;
      auto g = 0.5 * (1 + T);
      auto dg = 0.5 * S * du;
      out.phi0 = a * g;
      out.phi1 = g + a * dg;
      if (need2 || need3) {
        auto d2g = 0.5 * S * (d2u - 2 * T * du * du);
        if (need2) out.phi2 = 2 * dg + a * d2g;
        if (need3) {
          auto du3 = du * du * du;
          auto d3g = 0.5 * S * (d3u - 6 * T * du * d2u + 4 * T * T * du3 - 2 * S * du3);
          out.phi3 = 3 * d2g + a * d3g;
        }
      }
      break;
    }
  }
  return out;
}

}  // namespace torch_ws
