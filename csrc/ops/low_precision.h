// bfloat16 / float16 inputs: when every floating input has one of these dtypes, the public ops
// compute in float32 (with float64 scalar sums, as for float32 inputs) on the exactly upcast
// values and return the input dtype, bounds rounded outward. Mixed dtypes are left to the usual
// check, which names them.
//
// The policy is applied where the call first arrives: the Autograd kernels (ops/<family>/autograd.cpp), and
// the backend kernels for calls that skip the Autograd key (torch.inference_mode()). Both call
// the functions below, which redispatch with float32 tensors (the casts are ordinary
// differentiable ops, so gradients return in the input dtype).
#pragma once

#include "ops/problem_args.h"

#include <ATen/ATen.h>

#include <tuple>

namespace torch_ws::low_precision {

bool applies(const ProblemArgs& p);

// The same test on any op's tensors: `dtype` (x's) is bfloat16 or float16 and every floating
// tensor of `tensors` has it (the deep family's deep_low_precision asks it too).
bool applies(at::ScalarType dtype, at::TensorList tensors);

std::tuple<at::Tensor, at::Tensor> hessian_traces(const ProblemArgs& p);

at::Tensor ws_bound(const ProblemArgs& p);

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
spectral_bound(const ProblemArgs& p);

at::Tensor ws_bound_batched(const ProblemArgs& p);

}  // namespace torch_ws::low_precision
