// File: examples/models/models.h
// Genie's model zoo: plain libtorch (torch::nn) inference models with seeded weights and
// configurable sizes, used by parity tests, examples and benchmarks. Nothing here
// depends on Genie: each model is what an unmodified user program would write, so the
// same module runs eagerly on CPU and captured on `remote_accelerator`.
//
//   #include "examples/models/models.h"
//
//   genie::models::Gpt2 gpt(genie::models::Gpt2Config{});    // small default config
//   gpt->to(device);
//   genie::models::KvCache cache = gpt->NewCache(/*batch=*/1, genie::models::KvCacheMode::kStatic,
//   device); torch::Tensor logits = gpt->forward(prompt.to(device), &cache, /*position=*/0);  //
//   prefill logits = gpt->forward(next_token.to(device), &cache, prompt.size(1));             //
//   decode
//
// Every model is fp32, in eval mode from construction, and initialises its weights
// from `seed` with a private generator, so two models built from one config hold
// identical weights whatever the state of the global generator (which torch::nn's own
// default initialisation still advances). Default configs are small (a forward
// takes a few ms on a 2-core CPU); the named configs (Gpt2Config::Gpt2Small() ...)
// give the benchmark sizes.
#ifndef EXAMPLES_MODELS_MODELS_H_
#define EXAMPLES_MODELS_MODELS_H_

#include <torch/nn.h>
#include <torch/types.h>

#include <cstdint>
#include <string>
#include <vector>

namespace genie::models {

// Re-initialises every parameter and floating buffer of `module` from `seed`:
// matrices ~ N(0, 1/fan_in), norm gains ~ 1 + N(0, 0.1^2), biases ~ N(0, 0.05^2),
// BatchNorm running statistics near (0, 1). Deterministic, and independent of the
// global generator.
void InitParameters(torch::nn::Module& module, uint64_t seed);

// Number of elements in all parameters of `module` (tied weights counted once).
int64_t ParameterCount(const torch::nn::Module& module);

// ---------------------------------------------------------------------------------
// Attention building blocks (shared by the transformer models).

// Self-attention with a fused qkv projection and at::scaled_dot_product_attention.
struct SelfAttentionImpl : torch::nn::Module {
  SelfAttentionImpl(int64_t dim, int64_t heads);
  // x: [batch, seq, dim]; mask: broadcastable to [batch, heads, seq, seq] (bool: true =
  // attend; float: additive) or undefined. Returns [batch, seq, dim].
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& mask = {},
                        bool causal = false);

  int64_t heads;
  torch::nn::Linear qkv{nullptr}, proj{nullptr};
};
TORCH_MODULE(SelfAttention);

// Cross-attention: queries from `x`, keys and values from `context`.
struct CrossAttentionImpl : torch::nn::Module {
  CrossAttentionImpl(int64_t dim, int64_t context_dim, int64_t heads);
  // x: [batch, seq_q, dim]; context: [batch, seq_kv, context_dim]. Returns [batch, seq_q, dim].
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& context);

  int64_t heads;
  torch::nn::Linear q{nullptr}, kv{nullptr}, proj{nullptr};
};
TORCH_MODULE(CrossAttention);

// ---------------------------------------------------------------------------------
// Mlp: (Linear -> GELU -> LayerNorm) x layers, then Linear.
struct MlpConfig {
  int64_t in_dim = 64;
  int64_t hidden_dim = 128;
  int64_t out_dim = 32;
  int64_t layers = 3;
  uint64_t seed = 1;
};

struct MlpImpl : torch::nn::Module {
  explicit MlpImpl(const MlpConfig& config = {});
  torch::Tensor forward(const torch::Tensor& x);  // [batch, in_dim] -> [batch, out_dim]

  MlpConfig config;
  torch::nn::Sequential layers{nullptr};
};
TORCH_MODULE(Mlp);

// ---------------------------------------------------------------------------------
// ViT: Conv2d patch embedding (stride = patch), cls token + position embedding,
// pre-LN transformer blocks, classification head on the cls token.
struct ViTConfig {
  int64_t image_size = 32;
  int64_t patch_size = 8;
  int64_t channels = 3;
  int64_t dim = 64;
  int64_t depth = 2;
  int64_t heads = 4;
  int64_t mlp_ratio = 4;
  int64_t num_classes = 10;  // 0: no classification head (an encoder only)
  uint64_t seed = 2;

  int64_t num_patches() const { return (image_size / patch_size) * (image_size / patch_size); }
  static ViTConfig ViTBase16();  // 224px, 16px patches, 768 dim, 12 layers, 12 heads (~86M)
};

// Pre-LN block: x + attn(ln1(x)), then x + mlp(ln2(x)).
struct ViTBlockImpl : torch::nn::Module {
  ViTBlockImpl(int64_t dim, int64_t heads, int64_t mlp_ratio);
  torch::Tensor forward(const torch::Tensor& x);  // [batch, tokens, dim] -> same

  torch::nn::LayerNorm ln1{nullptr}, ln2{nullptr};
  SelfAttention attn{nullptr};
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};
};
TORCH_MODULE(ViTBlock);

struct ViTImpl : torch::nn::Module {
  explicit ViTImpl(const ViTConfig& config = {});
  // images: [batch, channels, H, W] -> tokens [batch, 1 + num_patches, dim] (final LN).
  torch::Tensor Encode(const torch::Tensor& images);
  // images -> class logits [batch, num_classes] (head on the cls token); without a
  // head, the final cls token [batch, dim].
  torch::Tensor forward(const torch::Tensor& images);

  ViTConfig config;
  torch::nn::Conv2d patch_embed{nullptr};
  torch::Tensor cls_token, pos_embed;  // [1, 1, dim], [1, 1 + num_patches, dim]
  torch::nn::ModuleList blocks{nullptr};
  torch::nn::LayerNorm norm{nullptr};
  torch::nn::Linear head{nullptr};  // null when num_classes == 0
};
TORCH_MODULE(ViT);

// ---------------------------------------------------------------------------------
// BERT encoder: token + position + segment embeddings, LayerNorm, post-LN blocks with
// a padding mask derived from the input ids.
struct BertConfig {
  int64_t vocab_size = 1000;
  int64_t max_positions = 64;
  int64_t type_vocab_size = 2;
  int64_t dim = 64;
  int64_t depth = 2;
  int64_t heads = 4;
  int64_t ffn_dim = 256;
  int64_t pad_id = 0;
  uint64_t seed = 3;

  static BertConfig BertBase();  // 30522 vocab, 512 positions, 768 dim, 12 layers (~109M)
};

// Post-LN block: ln1(x + attn(x)), then ln2(x + ffn(x)).
struct BertLayerImpl : torch::nn::Module {
  BertLayerImpl(int64_t dim, int64_t heads, int64_t ffn_dim);
  // x: [batch, seq, dim]; mask: bool [batch, 1, 1, seq] (true = real token).
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& mask);

  SelfAttention attn{nullptr};
  torch::nn::LayerNorm ln1{nullptr}, ln2{nullptr};
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};
};
TORCH_MODULE(BertLayer);

struct BertEncoderImpl : torch::nn::Module {
  explicit BertEncoderImpl(const BertConfig& config = {});
  // ids: [batch, seq] int64 (pad_id = padding); segments: [batch, seq] int64 or
  // undefined (all segment 0). Returns hidden states [batch, seq, dim].
  torch::Tensor forward(const torch::Tensor& ids, const torch::Tensor& segments = {});
  // The attention mask forward() uses: bool [batch, 1, 1, seq], true where ids != pad.
  torch::Tensor PaddingMask(const torch::Tensor& ids) const;

  BertConfig config;
  torch::nn::Embedding token_embed{nullptr}, position_embed{nullptr}, segment_embed{nullptr};
  torch::nn::LayerNorm embed_norm{nullptr};
  torch::nn::ModuleList layers{nullptr};
  torch::Tensor position_ids;  // buffer [max_positions] int64: 0, 1, ...
};
TORCH_MODULE(BertEncoder);

// ---------------------------------------------------------------------------------
// GPT-2: token + position embeddings, pre-LN causal blocks, tied or separate lm head,
// and a KV cache in two modes.
struct Gpt2Config {
  int64_t vocab_size = 512;
  int64_t max_positions = 64;
  int64_t dim = 64;
  int64_t depth = 2;
  int64_t heads = 4;
  bool tied_head = true;
  uint64_t seed = 4;

  static Gpt2Config
  Gpt2Small();  // GPT-2 124M: 50257 vocab, 1024 positions, 768 dim, 12 layers, 12 heads
};

enum class KvCacheMode {
  // keys/values grow with torch::cat along seq each step: shapes change every step.
  kGrowing,
  // keys/values are preallocated [batch, heads, max_positions, head_dim] and written in
  // place (index_copy_) at the current positions; attention runs over all max_positions
  // with an additive mask, so every decode step has identical shapes.
  kStatic,
};

// Per-layer keys and values, on the model's device.
struct KvCache {
  KvCacheMode mode = KvCacheMode::kGrowing;
  int64_t length = 0;                 // tokens cached so far
  std::vector<torch::Tensor> keys;    // per layer: [batch, heads, length | max_positions, head_dim]
  std::vector<torch::Tensor> values;  // same
};

struct Gpt2AttentionImpl : torch::nn::Module {
  Gpt2AttentionImpl(int64_t dim, int64_t heads);
  // x: [batch, T, dim]; positions: [T] int64 on x's device (absolute positions of x);
  // mask: additive [T, L] or undefined (causal over x alone, no cache). keys/values: the
  // layer's cache slots or nullptr. Returns [batch, T, dim].
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& positions,
                        const torch::Tensor& mask, KvCacheMode mode, torch::Tensor* keys,
                        torch::Tensor* values);

  int64_t heads;
  torch::nn::Linear qkv{nullptr}, proj{nullptr};
};
TORCH_MODULE(Gpt2Attention);

struct Gpt2BlockImpl : torch::nn::Module {
  Gpt2BlockImpl(int64_t dim, int64_t heads);
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& positions,
                        const torch::Tensor& mask, KvCacheMode mode, torch::Tensor* keys,
                        torch::Tensor* values);

  torch::nn::LayerNorm ln1{nullptr}, ln2{nullptr};
  Gpt2Attention attn{nullptr};
  torch::nn::Linear fc{nullptr}, proj{nullptr};
};
TORCH_MODULE(Gpt2Block);

struct Gpt2Impl : torch::nn::Module {
  explicit Gpt2Impl(const Gpt2Config& config = {});
  // An empty cache for `batch` sequences on `device` (static mode preallocates zeros).
  KvCache NewCache(int64_t batch, KvCacheMode mode, torch::Device device) const;
  // ids: [batch, T] int64 at absolute positions [position, position + T). With a cache,
  // attends to the cached tokens and appends this step's keys/values (position must
  // equal cache->length). Returns logits [batch, T, vocab_size].
  torch::Tensor forward(const torch::Tensor& ids, KvCache* cache = nullptr, int64_t position = 0);

  Gpt2Config config;
  torch::nn::Embedding token_embed{nullptr}, position_embed{nullptr};
  torch::nn::ModuleList blocks{nullptr};
  torch::nn::LayerNorm final_norm{nullptr};
  torch::nn::Linear lm_head{nullptr};  // null when tied_head
};
TORCH_MODULE(Gpt2);

// ---------------------------------------------------------------------------------
// SmallCnn: [Conv2d -> BatchNorm2d (eval) -> ReLU -> MaxPool2d] x stages, adaptive
// average pool, Linear.
struct SmallCnnConfig {
  int64_t channels = 3;
  std::vector<int64_t> widths = {16, 32};
  int64_t num_classes = 10;
  bool max_pool = true;  // false: stages keep their resolution (no MaxPool2d)
  uint64_t seed = 5;
};

struct SmallCnnImpl : torch::nn::Module {
  explicit SmallCnnImpl(const SmallCnnConfig& config = {});
  torch::Tensor forward(const torch::Tensor& images);  // [batch, C, H, W] -> [batch, num_classes]

  SmallCnnConfig config;
  torch::nn::Sequential features{nullptr};
  torch::nn::Linear classifier{nullptr};
};
TORCH_MODULE(SmallCnn);

// ---------------------------------------------------------------------------------
// DLRM-like recommender: EmbeddingBag tables (sum) over sparse ids with offsets, a
// dense bottom MLP, pairwise dot interaction, top MLP, sigmoid.
struct RecommenderConfig {
  int64_t dense_features = 13;
  std::vector<int64_t> table_rows = {1000, 500, 200};
  int64_t embedding_dim = 16;
  std::vector<int64_t> bottom_widths = {64};   // then embedding_dim
  std::vector<int64_t> top_widths = {64, 32};  // then 1
  uint64_t seed = 6;
};

struct EmbeddingBagRecommenderImpl : torch::nn::Module {
  explicit EmbeddingBagRecommenderImpl(const RecommenderConfig& config = {});
  // dense: [batch, dense_features] fp32; ids[t]: flat int64 ids of table t; offsets[t]:
  // [batch] int64 start of each sample's bag in ids[t]. Returns click probability [batch, 1].
  torch::Tensor forward(const torch::Tensor& dense, const std::vector<torch::Tensor>& ids,
                        const std::vector<torch::Tensor>& offsets);

  RecommenderConfig config;
  torch::nn::Sequential bottom{nullptr}, top{nullptr};
  torch::nn::ModuleList tables{nullptr};
  torch::Tensor pair_index;  // buffer: flat indices i * F + j, i < j, into [F, F]
};
TORCH_MODULE(EmbeddingBagRecommender);

// ---------------------------------------------------------------------------------
// VQA, the running example: a ViT-style patch encoder ("vision"), a BERT-style text
// encoder ("language"), cross-attention fusion where question tokens attend to image
// tokens ("fusion"), and a pooled answer classifier ("head"). Parameter names start with
// those four words, so module paths say which modality each op belongs to.
struct VqaConfig {
  ViTConfig vision;
  BertConfig language;
  int64_t fusion_depth = 1;
  int64_t fusion_heads = 4;
  int64_t num_answers = 32;
  uint64_t seed = 7;
};

// Pre-LN cross-attention block: x + cross(ln_q(x), ln_kv(image)), then x + ffn(ln(x)).
struct FusionLayerImpl : torch::nn::Module {
  FusionLayerImpl(int64_t dim, int64_t context_dim, int64_t heads);
  torch::Tensor forward(const torch::Tensor& text, const torch::Tensor& image);

  torch::nn::LayerNorm ln_q{nullptr}, ln_kv{nullptr}, ln_ffn{nullptr};
  CrossAttention cross{nullptr};
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};
};
TORCH_MODULE(FusionLayer);

struct VqaImpl : torch::nn::Module {
  explicit VqaImpl(const VqaConfig& config = {});
  // images: [batch, C, H, W]; question: [batch, seq] int64 (pad_id = padding).
  // Returns answer logits [batch, num_answers].
  torch::Tensor forward(const torch::Tensor& images, const torch::Tensor& question);

  VqaConfig config;
  ViT vision{nullptr};
  BertEncoder language{nullptr};
  torch::nn::ModuleList fusion{nullptr};
  torch::nn::Sequential head{nullptr};  // LayerNorm, Linear, GELU, Linear
};
TORCH_MODULE(Vqa);

}  // namespace genie::models

#endif  // EXAMPLES_MODELS_MODELS_H_
