// The two skeletons every Autograd kernel follows, one for the public ops and one for the internal
// ops, so that an op family's autograd file (ops/<family>/autograd.cpp) holds only what is its
// own: its Functions, its forward mode, its error messages.
//
// The families' Functions live at global scope for their grad_fn's sake: Python prints a C++
// Function's node as the last "::" segment of its demangled type, torch::autograd::CppNode<T>,
// so a namespaced T read <WsBoundFunction>> (a stray bracket); a global one reads
// <CppNode<WsBoundBackward>>.
#pragma once

#include "autograd/support.h"
#include "ops/low_precision.h"
#include "ops/problem_args.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/TypeTraits.h>

#include <cstddef>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace torch_ws {

// What an op whose kernel has signature `Signature` returns: one tensor or a tuple of them.
template <typename Signature>
using OpResult = typename c10::guts::function_traits<Signature>::return_type;

// A Function's outputs as the op's result.
template <typename Result, size_t... k>
Result result_from(const variable_list& outputs, std::index_sequence<k...>) {
  return Result{outputs[k]...};
}
template <typename Result>
Result result_from(const variable_list& outputs) {
  if constexpr (std::is_same_v<Result, at::Tensor>) {
    return outputs[0];
  } else {
    return result_from<Result>(outputs, std::make_index_sequence<std::tuple_size_v<Result>>());
  }
}

// How a public op answers forward-mode tangents when it does not serve them: an error, `why`
// following the op's name.
struct NoForwardMode {
  const char* why;
};

// The Autograd kernel of a public op `op` (named `name` in errors) on the problem `p`:
// 1. bfloat16/float16 inputs go through the low-precision policy (ops/low_precision.h), which
//    calls the op again in float32, through this kernel;
// 2. forward-mode tangents are served by `forward_mode`, which returns the outputs with their
//    tangents from one evaluation with gradients (docs/math.md §6), or refused (NoForwardMode);
//    on inputs that also require grad they are refused either way (refuse_both_modes);
// 3. where autograd records nothing, the op itself runs below autograd, and its kernels skip the
//    gradient work;
// 4. otherwise `Function` records the call: its forward keeps what its backward needs.
// Function::apply connects its node to the tensors among its arguments, so the Function gets the
// problem's tensors as a list beside the problem itself: forward(ctx, const ProblemArgs& p,
// at::TensorList /*p.tensors()*/), and its backward returns op_input_grads.
template <typename Function, typename Signature, typename ForwardMode>
OpResult<Signature> public_op_autograd(const c10::TypedOperatorHandle<Signature>& op,
                                       const char* name, const ProblemArgs& p,
                                       OpResult<Signature> (*low_precision)(const ProblemArgs&),
                                       ForwardMode forward_mode) {
  if (low_precision::applies(p)) return low_precision(p);
  const Tangents tangents = forward_tangents(p, name);
  const bool reverse = p.records_grad();
  if (tangents.any) {
    if constexpr (std::is_same_v<ForwardMode, NoForwardMode>) {
      TORCH_CHECK(false, name, forward_mode.why);
    } else {
      refuse_both_modes(reverse, name);
      return forward_mode(p, tangents);
    }
  }
  if (!reverse) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return p.call(op);
  }
  const std::vector<at::Tensor> tensors = p.tensors();
  return result_from<OpResult<Signature>>(Function::apply(p, at::TensorList(tensors)));
}

// The Autograd kernel of an internal op (named `op` in errors): its results are derivatives
// already (traces' gradients, eigenvectors), so it is not differentiable itself. Tangents on
// `tensors` are refused; `run` calls the op below autograd; where `inputs` require grad, the
// floating results carry an Error node that raises `message` if they are differentiated.
template <typename Run>
auto internal_op_autograd(const char* op, const std::vector<at::Tensor>& tensors,
                          const std::vector<at::Tensor>& inputs, const std::string& message,
                          const Run& run) {
  refuse_tangents(tensors, op);
  auto results = [&] {
    at::AutoDispatchBelowADInplaceOrView guard;
    return run();
  }();
  attach_double_backward_error(results, inputs, message);
  return results;
}

}  // namespace torch_ws
