// Train Linear(2,10) → tanh → Linear(10,1) on two Gaussian classes with and without HSR
// regularization, printing the loss and the WS bound on λ_max per epoch. LibTorch only.
//   usage: train_hsr [epochs=200] [rho=0.1]
#include <torch/torch.h>
#include <torch_ws/torch_ws.h>

#include <cstdio>
#include <string>

namespace {

void train(double rho, int epochs) {
  torch::manual_seed(0);
  const int64_t n = 200;
  auto opts = torch::TensorOptions().dtype(torch::kFloat64);
  // Two classes: means (−1,−1) and (1,1), variance 2 per axis.
  auto x = torch::cat({torch::randn({n / 2, 2}, opts) * std::sqrt(2.0) - 1,
                       torch::randn({n / 2, 2}, opts) * std::sqrt(2.0) + 1});
  auto y = torch::cat({torch::zeros({n / 2}, opts), torch::ones({n / 2}, opts)});

  torch::nn::Sequential model(torch::nn::Linear(2, 10), torch::nn::Tanh(), torch::nn::Linear(10, 1));
  model->to(torch::kFloat64);
  torch_ws::HSRRegularizer reg(model);
  torch::optim::SGD opt(model->parameters(), torch::optim::SGDOptions(0.5));

  std::printf("\n%s (rho = %g)\n%6s %10s %12s\n", rho > 0 ? "with HSR" : "plain", rho, "epoch",
              "loss", "ws_bound");
  for (int epoch = 1; epoch <= epochs; ++epoch) {
    opt.zero_grad();
    auto loss = torch::nn::functional::binary_cross_entropy_with_logits(
        model->forward(x).squeeze(-1), y);
    auto bound = reg(x, y);
    auto objective = rho > 0 ? loss + rho * bound : loss;
    objective.backward();
    opt.step();
    if (epoch == 1 || epoch % (epochs / 10 > 0 ? epochs / 10 : 1) == 0) {
      std::printf("%6d %10.5f %12.5f\n", epoch, loss.item<double>(), bound.item<double>());
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  const int epochs = argc > 1 ? std::stoi(argv[1]) : 200;
  const double rho = argc > 2 ? std::stod(argv[2]) : 0.1;
  train(0.0, epochs);
  train(rho, epochs);
  return 0;
}
