// File: benchmarks/rpc/export_weights.cc
// Writes the seeded weights of the benchmark models (the same configs and seeds that
// benchmarks/gpu_benchmark.cc builds) as state dicts Python's torch.load reads, plus
// reference outputs computed here on the CPU, so benchmarks/rpc/rpc_vs_genie.py can run
// the very same models under torch.distributed.rpc and check it did.
//
//   export_weights --out=/tmp/genie_rpc
//   # writes gpt2_small.pt, bert_base.pt (state dicts) and gpt2_ref.pt, bert_ref.pt
#include <torch/serialize.h>
#include <torch/torch.h>

#include <cstdio>
#include <fstream>
#include <string>

#include "examples/models/models.h"

namespace {

namespace m = genie::models;

bool Write(const std::string& path, const torch::IValue& value) {
  const std::vector<char> bytes = torch::pickle_save(value);
  std::ofstream f(path, std::ios::binary);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  return static_cast<bool>(f);
}

c10::Dict<std::string, at::Tensor> StateDict(const torch::nn::Module& module) {
  c10::Dict<std::string, at::Tensor> d;
  for (const auto& p : module.named_parameters()) d.insert(p.key(), p.value().detach().clone());
  for (const auto& b : module.named_buffers()) d.insert(b.key(), b.value().detach().clone());
  return d;
}

}  // namespace

int main(int argc, char** argv) {
  std::string out = "/tmp/genie_rpc";
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a.rfind("--out=", 0) == 0) out = a.substr(6);
  }
  torch::NoGradGuard no_grad;
  torch::manual_seed(11);

  m::Gpt2 gpt(m::Gpt2Config::Gpt2Small());
  m::BertEncoder bert(m::BertConfig::BertBase());
  if (!Write(out + "/gpt2_small.pt", StateDict(*gpt)) || !Write(out + "/bert_base.pt", StateDict(*bert))) {
    std::fprintf(stderr, "export_weights: cannot write under %s\n", out.c_str());
    return 1;
  }

  // GPT-2: a 16-token prompt, then 3 decode steps of token 0, static KV cache.
  c10::Dict<std::string, at::Tensor> gref;
  torch::Tensor prompt = torch::randint(0, 50257, {1, 16}, torch::kLong);
  m::KvCache cache = gpt->NewCache(1, m::KvCacheMode::kStatic, torch::kCPU);
  gref.insert("prompt", prompt);
  gref.insert("prefill_logits", gpt->forward(prompt, &cache, 0));
  for (int s = 0; s < 3; ++s) {
    gref.insert("step" + std::to_string(s) + "_logits",
                gpt->forward(torch::zeros({1, 1}, torch::kLong), &cache, cache.length));
  }
  // BERT: batch 2 x 16 tokens.
  c10::Dict<std::string, at::Tensor> bref;
  torch::Tensor ids = torch::randint(1, 30522, {2, 16}, torch::kLong);
  bref.insert("ids", ids);
  bref.insert("hidden", bert->forward(ids));
  if (!Write(out + "/gpt2_ref.pt", gref) || !Write(out + "/bert_ref.pt", bref)) return 1;
  std::printf("export_weights: wrote GPT-2 124M and BERT-base weights and references to %s\n", out.c_str());
  return 0;
}
