// File: examples/models/models.cc
// The model zoo's modules (see models.h). Plain libtorch: every op here is an ordinary
// ATen op, so the same code runs eagerly on CPU and captured on remote_accelerator.
// Shapes are annotated inline as [batch, heads, seq, head_dim] etc.
#include "examples/models/models.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <unordered_set>
#include <utility>

namespace genie::models {
namespace {

bool EndsWith(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::optional<at::Tensor> OptionalMask(const torch::Tensor& mask) {
  return mask.defined() ? std::optional<at::Tensor>(mask) : std::nullopt;
}

// [batch, seq, heads * head_dim] -> [batch, heads, seq, head_dim] (a view).
torch::Tensor SplitHeads(const torch::Tensor& x, int64_t heads) {
  const int64_t b = x.size(0), s = x.size(1), d = x.size(2);
  return x.view({b, s, heads, d / heads}).transpose(1, 2);
}

// [batch, heads, seq, head_dim] -> [batch, seq, heads * head_dim].
torch::Tensor MergeHeads(const torch::Tensor& x) {
  const int64_t b = x.size(0), h = x.size(1), s = x.size(2), hd = x.size(3);
  return x.transpose(1, 2).reshape({b, s, h * hd});
}

// Additive causal mask [T, L]: 0 where key position j <= query position, -inf elsewhere.
// Built from device tensors only, so its ops are the same at every decode step.
torch::Tensor AdditiveCausalMask(const torch::Tensor& positions, int64_t key_len) {
  const int64_t t = positions.size(0);
  torch::Tensor key_positions = torch::arange(key_len, positions.options());            // [L]
  torch::Tensor allowed = key_positions.view({1, key_len}).le(positions.view({t, 1}));  // [T, L]
  return torch::zeros({t, key_len}, positions.options().dtype(torch::kFloat))
      .masked_fill(allowed.logical_not(), -std::numeric_limits<float>::infinity());
}

torch::nn::LayerNorm MakeLayerNorm(int64_t dim) {
  return torch::nn::LayerNorm(torch::nn::LayerNormOptions({dim}));
}

}  // namespace

void InitParameters(torch::nn::Module& module, uint64_t seed) {
  torch::NoGradGuard no_grad;
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  auto normal = [&](const torch::Tensor& like, double mean, double std) {
    return at::randn(like.sizes(), gen, at::TensorOptions().dtype(like.scalar_type())) * std + mean;
  };
  for (const auto& item : module.named_parameters(/*recurse=*/true)) {
    torch::Tensor p = item.value();
    if (!p.is_floating_point()) continue;
    torch::Tensor init;
    if (p.dim() >= 2) {
      // Linear [out, in], Conv [out, in, kh, kw], Embedding [rows, dim]: fan_in from one
      // output row; tokens such as cls [1, 1, dim] and positions [1, n, dim]: dim.
      const int64_t fan_in = p.size(0) == 1 ? p.size(-1) : p[0].numel();
      init = normal(p, 0.0, 1.0 / std::sqrt(static_cast<double>(fan_in)));
    } else if (EndsWith(item.key(), "weight")) {
      init = normal(p, 1.0, 0.1);  // LayerNorm / BatchNorm gains
    } else {
      init = normal(p, 0.0, 0.05);  // biases
    }
    p.copy_(init);
  }
  for (const auto& item : module.named_buffers(/*recurse=*/true)) {
    torch::Tensor b = item.value();
    if (!b.is_floating_point()) continue;
    if (EndsWith(item.key(), "running_mean")) {
      b.copy_(normal(b, 0.0, 0.1));
    } else if (EndsWith(item.key(), "running_var")) {
      b.copy_(at::rand(b.sizes(), gen, at::TensorOptions().dtype(b.scalar_type())) + 0.5);
    }
  }
}

int64_t ParameterCount(const torch::nn::Module& module) {
  std::unordered_set<const void*> seen;
  int64_t n = 0;
  for (const torch::Tensor& p : module.parameters(/*recurse=*/true)) {
    if (seen.insert(p.unsafeGetTensorImpl()).second) n += p.numel();
  }
  return n;
}

// ---------------------------------------------------------------------------------
// Attention.
SelfAttentionImpl::SelfAttentionImpl(int64_t dim, int64_t heads) : heads(heads) {
  TORCH_CHECK(dim % heads == 0, "SelfAttention: dim ", dim, " is not a multiple of heads ", heads);
  qkv = register_module("qkv", torch::nn::Linear(dim, 3 * dim));
  proj = register_module("proj", torch::nn::Linear(dim, dim));
}

torch::Tensor SelfAttentionImpl::forward(const torch::Tensor& x, const torch::Tensor& mask,
                                         bool causal) {
  const int64_t b = x.size(0), s = x.size(1), d = x.size(2);
  torch::Tensor qkv_out =
      qkv(x).view({b, s, 3, heads, d / heads}).permute({2, 0, 3, 1, 4});  // [3, b, h, s, hd]
  torch::Tensor y =
      at::scaled_dot_product_attention(qkv_out[0], qkv_out[1], qkv_out[2], OptionalMask(mask),
                                       /*dropout_p=*/0.0, causal);  // [b, h, s, hd]
  return proj(MergeHeads(y));
}

CrossAttentionImpl::CrossAttentionImpl(int64_t dim, int64_t context_dim, int64_t heads)
    : heads(heads) {
  TORCH_CHECK(dim % heads == 0, "CrossAttention: dim ", dim, " is not a multiple of heads ", heads);
  q = register_module("q", torch::nn::Linear(dim, dim));
  kv = register_module("kv", torch::nn::Linear(context_dim, 2 * dim));
  proj = register_module("proj", torch::nn::Linear(dim, dim));
}

torch::Tensor CrossAttentionImpl::forward(const torch::Tensor& x, const torch::Tensor& context) {
  torch::Tensor query = SplitHeads(q(x), heads);              // [b, h, sq, hd]
  std::vector<torch::Tensor> k_v = kv(context).chunk(2, -1);  // 2 x [b, skv, dim]
  torch::Tensor y =
      at::scaled_dot_product_attention(query, SplitHeads(k_v[0], heads), SplitHeads(k_v[1], heads));
  return proj(MergeHeads(y));  // [b, sq, dim]
}

// ---------------------------------------------------------------------------------
// Mlp.
MlpImpl::MlpImpl(const MlpConfig& config) : config(config) {
  torch::nn::Sequential seq;
  int64_t in = config.in_dim;
  for (int64_t i = 0; i < config.layers; ++i) {
    seq->push_back(torch::nn::Linear(in, config.hidden_dim));
    seq->push_back(torch::nn::GELU());
    seq->push_back(MakeLayerNorm(config.hidden_dim));
    in = config.hidden_dim;
  }
  seq->push_back(torch::nn::Linear(in, config.out_dim));
  layers = register_module("layers", seq);
  InitParameters(*this, config.seed);
  eval();
}

torch::Tensor MlpImpl::forward(const torch::Tensor& x) { return layers->forward(x); }

// ---------------------------------------------------------------------------------
// ViT.
ViTConfig ViTConfig::ViTBase16() {
  ViTConfig c;
  c.image_size = 224;
  c.patch_size = 16;
  c.dim = 768;
  c.depth = 12;
  c.heads = 12;
  c.mlp_ratio = 4;
  c.num_classes = 1000;
  return c;
}

ViTBlockImpl::ViTBlockImpl(int64_t dim, int64_t heads, int64_t mlp_ratio) {
  ln1 = register_module("ln1", MakeLayerNorm(dim));
  attn = register_module("attn", SelfAttention(dim, heads));
  ln2 = register_module("ln2", MakeLayerNorm(dim));
  fc1 = register_module("fc1", torch::nn::Linear(dim, mlp_ratio * dim));
  fc2 = register_module("fc2", torch::nn::Linear(mlp_ratio * dim, dim));
}

torch::Tensor ViTBlockImpl::forward(const torch::Tensor& x) {
  torch::Tensor h = x + attn(ln1(x));
  return h + fc2(torch::gelu(fc1(ln2(h))));
}

ViTImpl::ViTImpl(const ViTConfig& config) : config(config) {
  TORCH_CHECK(config.image_size % config.patch_size == 0,
              "ViT: image_size must be a multiple of patch_size");
  patch_embed = register_module(
      "patch_embed",
      torch::nn::Conv2d(torch::nn::Conv2dOptions(config.channels, config.dim, config.patch_size)
                            .stride(config.patch_size)));
  cls_token = register_parameter("cls_token", torch::zeros({1, 1, config.dim}));
  pos_embed =
      register_parameter("pos_embed", torch::zeros({1, 1 + config.num_patches(), config.dim}));
  blocks = register_module("blocks", torch::nn::ModuleList());
  for (int64_t i = 0; i < config.depth; ++i) {
    blocks->push_back(ViTBlock(config.dim, config.heads, config.mlp_ratio));
  }
  norm = register_module("norm", MakeLayerNorm(config.dim));
  if (config.num_classes > 0)
    head = register_module("head", torch::nn::Linear(config.dim, config.num_classes));
  InitParameters(*this, config.seed);
  eval();
}

torch::Tensor ViTImpl::Encode(const torch::Tensor& images) {
  const int64_t b = images.size(0);
  torch::Tensor patches = patch_embed(images).flatten(2).transpose(1, 2);  // [b, n, dim]
  torch::Tensor x =
      torch::cat({cls_token.expand({b, -1, -1}), patches}, 1) + pos_embed;  // [b, 1 + n, dim]
  for (const auto& block : *blocks) x = block->as<ViTBlockImpl>()->forward(x);
  return norm(x);
}

torch::Tensor ViTImpl::forward(const torch::Tensor& images) {
  torch::Tensor cls = Encode(images).select(1, 0);  // [b, dim]
  return head ? head(cls) : cls;
}

// ---------------------------------------------------------------------------------
// BERT.
BertConfig BertConfig::BertBase() {
  BertConfig c;
  c.vocab_size = 30522;
  c.max_positions = 512;
  c.dim = 768;
  c.depth = 12;
  c.heads = 12;
  c.ffn_dim = 3072;
  return c;
}

BertLayerImpl::BertLayerImpl(int64_t dim, int64_t heads, int64_t ffn_dim) {
  attn = register_module("attn", SelfAttention(dim, heads));
  ln1 = register_module("ln1", MakeLayerNorm(dim));
  fc1 = register_module("fc1", torch::nn::Linear(dim, ffn_dim));
  fc2 = register_module("fc2", torch::nn::Linear(ffn_dim, dim));
  ln2 = register_module("ln2", MakeLayerNorm(dim));
}

torch::Tensor BertLayerImpl::forward(const torch::Tensor& x, const torch::Tensor& mask) {
  torch::Tensor h = ln1(x + attn(x, mask));
  return ln2(h + fc2(torch::gelu(fc1(h))));
}

BertEncoderImpl::BertEncoderImpl(const BertConfig& config) : config(config) {
  token_embed = register_module("token_embed", torch::nn::Embedding(config.vocab_size, config.dim));
  position_embed =
      register_module("position_embed", torch::nn::Embedding(config.max_positions, config.dim));
  segment_embed =
      register_module("segment_embed", torch::nn::Embedding(config.type_vocab_size, config.dim));
  embed_norm = register_module("embed_norm", MakeLayerNorm(config.dim));
  layers = register_module("layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < config.depth; ++i)
    layers->push_back(BertLayer(config.dim, config.heads, config.ffn_dim));
  position_ids = register_buffer("position_ids", torch::arange(config.max_positions, torch::kLong));
  InitParameters(*this, config.seed);
  eval();
}

torch::Tensor BertEncoderImpl::PaddingMask(const torch::Tensor& ids) const {
  return ids.ne(config.pad_id).view({ids.size(0), 1, 1, ids.size(1)});  // [b, 1, 1, s]
}

torch::Tensor BertEncoderImpl::forward(const torch::Tensor& ids, const torch::Tensor& segments) {
  const int64_t s = ids.size(1);
  TORCH_CHECK(s <= config.max_positions, "BertEncoder: sequence of ", s, " exceeds max_positions ",
              config.max_positions);
  torch::Tensor seg = segments.defined() ? segments : torch::zeros_like(ids);
  torch::Tensor x =
      token_embed(ids) + position_embed(position_ids.narrow(0, 0, s)) + segment_embed(seg);
  x = embed_norm(x);  // [b, s, dim]
  const torch::Tensor mask = PaddingMask(ids);
  for (const auto& layer : *layers) x = layer->as<BertLayerImpl>()->forward(x, mask);
  return x;
}

// ---------------------------------------------------------------------------------
// GPT-2.
Gpt2Config Gpt2Config::Gpt2Small() {
  Gpt2Config c;
  c.vocab_size = 50257;
  c.max_positions = 1024;
  c.dim = 768;
  c.depth = 12;
  c.heads = 12;
  c.tied_head = true;
  return c;
}

Gpt2AttentionImpl::Gpt2AttentionImpl(int64_t dim, int64_t heads) : heads(heads) {
  TORCH_CHECK(dim % heads == 0, "Gpt2Attention: dim ", dim, " is not a multiple of heads ", heads);
  qkv = register_module("qkv", torch::nn::Linear(dim, 3 * dim));
  proj = register_module("proj", torch::nn::Linear(dim, dim));
}

torch::Tensor Gpt2AttentionImpl::forward(const torch::Tensor& x, const torch::Tensor& positions,
                                         const torch::Tensor& mask, KvCacheMode mode,
                                         torch::Tensor* keys, torch::Tensor* values) {
  const int64_t b = x.size(0), t = x.size(1), d = x.size(2);
  torch::Tensor qkv_out =
      qkv(x).view({b, t, 3, heads, d / heads}).permute({2, 0, 3, 1, 4});  // [3, b, h, t, hd]
  torch::Tensor q = qkv_out[0], k = qkv_out[1], v = qkv_out[2];
  if (keys != nullptr) {
    if (mode == KvCacheMode::kStatic) {
      // Write this step's keys/values in place at their positions: [b, h, max_positions, hd].
      keys->index_copy_(2, positions, k);
      values->index_copy_(2, positions, v);
    } else {
      // Append along seq: [b, h, past + t, hd].
      *keys = keys->defined() ? torch::cat({*keys, k}, 2) : k;
      *values = values->defined() ? torch::cat({*values, v}, 2) : v;
    }
    k = *keys;
    v = *values;
  }
  // Without a mask, attention is causal over x itself (prefill, or no cache); a single
  // query with a growing cache attends to every cached key.
  const bool causal = !mask.defined() && t > 1;
  torch::Tensor y =
      at::scaled_dot_product_attention(q, k, v, OptionalMask(mask), /*dropout_p=*/0.0, causal);
  return proj(MergeHeads(y));  // [b, t, dim]
}

Gpt2BlockImpl::Gpt2BlockImpl(int64_t dim, int64_t heads) {
  ln1 = register_module("ln1", MakeLayerNorm(dim));
  attn = register_module("attn", Gpt2Attention(dim, heads));
  ln2 = register_module("ln2", MakeLayerNorm(dim));
  fc = register_module("fc", torch::nn::Linear(dim, 4 * dim));
  proj = register_module("proj", torch::nn::Linear(4 * dim, dim));
}

torch::Tensor Gpt2BlockImpl::forward(const torch::Tensor& x, const torch::Tensor& positions,
                                     const torch::Tensor& mask, KvCacheMode mode,
                                     torch::Tensor* keys, torch::Tensor* values) {
  torch::Tensor h = x + attn(ln1(x), positions, mask, mode, keys, values);
  return h + proj(torch::gelu(fc(ln2(h)), "tanh"));
}

Gpt2Impl::Gpt2Impl(const Gpt2Config& config) : config(config) {
  token_embed = register_module("token_embed", torch::nn::Embedding(config.vocab_size, config.dim));
  position_embed =
      register_module("position_embed", torch::nn::Embedding(config.max_positions, config.dim));
  blocks = register_module("blocks", torch::nn::ModuleList());
  for (int64_t i = 0; i < config.depth; ++i) blocks->push_back(Gpt2Block(config.dim, config.heads));
  final_norm = register_module("final_norm", MakeLayerNorm(config.dim));
  if (!config.tied_head) {
    lm_head = register_module(
        "lm_head",
        torch::nn::Linear(torch::nn::LinearOptions(config.dim, config.vocab_size).bias(false)));
  }
  InitParameters(*this, config.seed);
  eval();
}

KvCache Gpt2Impl::NewCache(int64_t batch, KvCacheMode mode, torch::Device device) const {
  KvCache cache;
  cache.mode = mode;
  cache.keys.resize(config.depth);
  cache.values.resize(config.depth);
  if (mode == KvCacheMode::kStatic) {
    const auto opts = torch::TensorOptions().dtype(torch::kFloat).device(device);
    for (int64_t l = 0; l < config.depth; ++l) {
      // [batch, heads, max_positions, head_dim]
      cache.keys[l] = torch::zeros(
          {batch, config.heads, config.max_positions, config.dim / config.heads}, opts);
      cache.values[l] = torch::zeros_like(cache.keys[l]);
    }
  }
  return cache;
}

torch::Tensor Gpt2Impl::forward(const torch::Tensor& ids, KvCache* cache, int64_t position) {
  const int64_t t = ids.size(1);
  TORCH_CHECK(position >= 0 && position + t <= config.max_positions, "Gpt2: positions [", position,
              ", ", position + t, ") exceed max_positions ", config.max_positions);
  TORCH_CHECK(cache == nullptr || cache->length == position, "Gpt2: the cache holds ",
              cache ? cache->length : 0, " tokens but the step starts at position ", position);
  TORCH_CHECK(cache == nullptr || static_cast<int64_t>(cache->keys.size()) == config.depth,
              "Gpt2: the cache was made for another model (NewCache)");
  // Absolute positions of this step [t], made on the host and moved with the ids: the
  // captured ops never see `position` as a scalar, so decode steps are identical.
  const torch::Tensor positions =
      torch::arange(position, position + t, torch::kLong).to(ids.device());
  torch::Tensor x = token_embed(ids) + position_embed(positions);  // [b, t, dim]

  torch::Tensor mask;  // additive [t, L]
  KvCacheMode mode = cache ? cache->mode : KvCacheMode::kGrowing;
  if (cache != nullptr && mode == KvCacheMode::kStatic) {
    mask = AdditiveCausalMask(positions, config.max_positions);
  } else if (cache != nullptr && cache->length > 0 && t > 1) {
    mask = AdditiveCausalMask(positions, cache->length + t);
  }
  for (int64_t l = 0; l < config.depth; ++l) {
    torch::Tensor* keys = cache ? &cache->keys[l] : nullptr;
    torch::Tensor* values = cache ? &cache->values[l] : nullptr;
    x = blocks->ptr<Gpt2BlockImpl>(l)->forward(x, positions, mask, mode, keys, values);
  }
  if (cache != nullptr) cache->length += t;
  x = final_norm(x);
  return config.tied_head ? at::linear(x, token_embed->weight) : lm_head(x);  // [b, t, vocab]
}

// ---------------------------------------------------------------------------------
// SmallCnn.
SmallCnnImpl::SmallCnnImpl(const SmallCnnConfig& config) : config(config) {
  torch::nn::Sequential seq;
  int64_t in = config.channels;
  for (int64_t w : config.widths) {
    seq->push_back(torch::nn::Conv2d(torch::nn::Conv2dOptions(in, w, 3).padding(1).bias(false)));
    seq->push_back(torch::nn::BatchNorm2d(w));
    seq->push_back(torch::nn::ReLU());
    if (config.max_pool) seq->push_back(torch::nn::MaxPool2d(torch::nn::MaxPool2dOptions(2)));
    in = w;
  }
  seq->push_back(torch::nn::AdaptiveAvgPool2d(torch::nn::AdaptiveAvgPool2dOptions(1)));
  seq->push_back(torch::nn::Flatten());
  features = register_module("features", seq);
  classifier = register_module("classifier", torch::nn::Linear(in, config.num_classes));
  InitParameters(*this, config.seed);
  eval();
}

torch::Tensor SmallCnnImpl::forward(const torch::Tensor& images) {
  return classifier(features->forward(images));
}

// ---------------------------------------------------------------------------------
// Recommender.
EmbeddingBagRecommenderImpl::EmbeddingBagRecommenderImpl(const RecommenderConfig& config)
    : config(config) {
  const int64_t d = config.embedding_dim;
  torch::nn::Sequential bot;
  int64_t in = config.dense_features;
  for (int64_t w : config.bottom_widths) {
    bot->push_back(torch::nn::Linear(in, w));
    bot->push_back(torch::nn::ReLU());
    in = w;
  }
  bot->push_back(torch::nn::Linear(in, d));
  bot->push_back(torch::nn::ReLU());
  bottom = register_module("bottom", bot);

  tables = register_module("tables", torch::nn::ModuleList());
  for (int64_t rows : config.table_rows) {
    tables->push_back(
        torch::nn::EmbeddingBag(torch::nn::EmbeddingBagOptions(rows, d).mode(torch::kSum)));
  }
  // Upper triangle (i < j) of the [F, F] dot-product matrix, F = 1 + tables.
  const int64_t f = 1 + static_cast<int64_t>(config.table_rows.size());
  std::vector<int64_t> pairs;
  for (int64_t i = 0; i < f; ++i) {
    for (int64_t j = i + 1; j < f; ++j) pairs.push_back(i * f + j);
  }
  pair_index = register_buffer("pair_index", torch::tensor(pairs, torch::kLong));

  torch::nn::Sequential tp;
  in = d + static_cast<int64_t>(pairs.size());
  for (int64_t w : config.top_widths) {
    tp->push_back(torch::nn::Linear(in, w));
    tp->push_back(torch::nn::ReLU());
    in = w;
  }
  tp->push_back(torch::nn::Linear(in, 1));
  top = register_module("top", tp);
  InitParameters(*this, config.seed);
  eval();
}

torch::Tensor EmbeddingBagRecommenderImpl::forward(const torch::Tensor& dense,
                                                   const std::vector<torch::Tensor>& ids,
                                                   const std::vector<torch::Tensor>& offsets) {
  TORCH_CHECK(ids.size() == tables->size() && offsets.size() == tables->size(),
              "EmbeddingBagRecommender: ", tables->size(), " tables but ", ids.size(),
              " id tensors and ", offsets.size(), " offset tensors");
  const int64_t b = dense.size(0);
  torch::Tensor bottom_out = bottom->forward(dense);  // [b, d]
  std::vector<torch::Tensor> features = {bottom_out};
  for (size_t t = 0; t < ids.size(); ++t) {
    features.push_back(
        tables->ptr<torch::nn::EmbeddingBagImpl>(t)->forward(ids[t], offsets[t]));  // [b, d]
  }
  torch::Tensor stacked = torch::stack(features, 1);                  // [b, F, d]
  torch::Tensor dots = torch::bmm(stacked, stacked.transpose(1, 2));  // [b, F, F]
  const int64_t f = stacked.size(1);
  torch::Tensor pairs = dots.reshape({b, f * f}).index_select(1, pair_index);  // [b, F(F-1)/2]
  return torch::sigmoid(top->forward(torch::cat({bottom_out, pairs}, 1)));     // [b, 1]
}

// ---------------------------------------------------------------------------------
// VQA.
FusionLayerImpl::FusionLayerImpl(int64_t dim, int64_t context_dim, int64_t heads) {
  ln_q = register_module("ln_q", MakeLayerNorm(dim));
  ln_kv = register_module("ln_kv", MakeLayerNorm(context_dim));
  cross = register_module("cross", CrossAttention(dim, context_dim, heads));
  ln_ffn = register_module("ln_ffn", MakeLayerNorm(dim));
  fc1 = register_module("fc1", torch::nn::Linear(dim, 4 * dim));
  fc2 = register_module("fc2", torch::nn::Linear(4 * dim, dim));
}

torch::Tensor FusionLayerImpl::forward(const torch::Tensor& text, const torch::Tensor& image) {
  torch::Tensor h = text + cross(ln_q(text), ln_kv(image));  // [b, s, dim]
  return h + fc2(torch::gelu(fc1(ln_ffn(h))));
}

VqaImpl::VqaImpl(const VqaConfig& config) : config(config) {
  ViTConfig vision_config = config.vision;
  vision_config.num_classes = 0;  // an encoder: the answer head is ours
  vision = register_module("vision", ViT(vision_config));
  language = register_module("language", BertEncoder(config.language));
  fusion = register_module("fusion", torch::nn::ModuleList());
  const int64_t dim = config.language.dim;
  for (int64_t i = 0; i < config.fusion_depth; ++i) {
    fusion->push_back(FusionLayer(dim, vision_config.dim, config.fusion_heads));
  }
  head = register_module(
      "head", torch::nn::Sequential(MakeLayerNorm(dim), torch::nn::Linear(dim, dim),
                                    torch::nn::GELU(), torch::nn::Linear(dim, config.num_answers)));
  InitParameters(*this, config.seed);
  eval();
}

torch::Tensor VqaImpl::forward(const torch::Tensor& images, const torch::Tensor& question) {
  torch::Tensor image = vision->Encode(images);  // [b, 1 + patches, vision dim]
  torch::Tensor text = language(question);       // [b, s, dim]
  for (const auto& layer : *fusion) text = layer->as<FusionLayerImpl>()->forward(text, image);
  // Mean over the question's real tokens.
  torch::Tensor keep =
      question.ne(config.language.pad_id).unsqueeze(-1).to(torch::kFloat);   // [b, s, 1]
  torch::Tensor pooled = (text * keep).sum(1) / keep.sum(1).clamp_min(1.0);  // [b, dim]
  return head->forward(pooled);                                              // [b, answers]
}

}  // namespace genie::models
