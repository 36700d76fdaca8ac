// Tests of loraq/checkpoint.hpp: Checkpoint reads single files, Hugging Face sharded checkpoints and
// diffusers folders; CheckpointWriter shards, names and replaces them. Shards are written here with
// SafetensorsWriter and indexes by hand, so the reader is checked against files it did not write;
// every rejection must be a loraq::Error naming the path.
#include <gtest/gtest.h>

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "test_support.hpp"
#include "loraq/checkpoint.hpp"
#include "loraq/error.hpp"
#include "loraq/io.hpp"
#include "loraq/quantized_checkpoint.hpp"

namespace fs = std::filesystem;
using namespace loraq::io;

namespace {

using loraq::testing::error_of;

// The message must name the path and say what went wrong (needle).
#define EXPECT_PATH_ERROR(statement, where, needle)                                            \
  do {                                                                                        \
    const std::string message_ = error_of([&] { statement; });                                \
    EXPECT_NE(message_.find(fs::path(where).string()), std::string::npos) << message_;        \
    EXPECT_NE(message_.find(needle), std::string::npos) << "[" << needle << "] " << message_; \
  } while (0)

std::vector<std::byte> pattern(std::size_t n, unsigned seed) {
  std::vector<std::byte> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = static_cast<std::byte>((i * 131 + seed * 7 + (i >> 8)) & 0xFF);
  return v;
}

std::size_t bytes_of(const TensorSpec& s) { return byte_size(s.dtype, element_count(s.shape, s.name), s.name); }

// Tensors with their contents: what a test writes and later expects to read back.
struct Tensors {
  std::vector<TensorSpec> specs;
  std::map<std::string, std::vector<std::byte>> bytes;
  void add(const std::string& name, DType dtype, std::vector<std::int64_t> shape) {
    specs.push_back({name, dtype, std::move(shape)});
    bytes[name] = pattern(bytes_of(specs.back()), static_cast<unsigned>(bytes.size() + 1));
  }
  // A U8 tensor of exactly `size` bytes, for tests about shard sizes.
  void add_bytes(const std::string& name, std::int64_t size) { add(name, DType::u8, {size}); }
  Tensors only(const std::vector<std::string>& names) const {
    Tensors out;
    for (const TensorSpec& s : specs)
      if (std::find(names.begin(), names.end(), s.name) != names.end()) {
        out.specs.push_back(s);
        out.bytes[s.name] = bytes.at(s.name);
      }
    return out;
  }
};

class TempDir : public ::testing::Test {
 protected:
  void SetUp() override {
    static std::atomic<int> counter{0};
    dir_ = fs::temp_directory_path() /
           ("loraq_test_checkpoint_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  fs::path file(const std::string& name) const { return dir_ / name; }
  fs::path put(const fs::path& p, const std::string& text) const {
    fs::create_directories(p.parent_path());
    std::ofstream(p, std::ios::binary) << text;
    return p;
  }
  static std::string slurp(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  }
  static std::vector<std::string> listing(const fs::path& folder) {
    std::vector<std::string> names;
    for (const auto& entry : fs::directory_iterator(folder)) names.push_back(entry.path().filename().string());
    std::sort(names.begin(), names.end());
    return names;
  }
  // Every file of a folder with its bytes.
  static std::map<std::string, std::string> contents(const fs::path& folder) {
    std::map<std::string, std::string> out;
    for (const std::string& name : listing(folder)) out[name] = slurp(folder / name);
    return out;
  }

  // One safetensors file holding `t`, written by the plain writer.
  static fs::path write_file(const fs::path& p, const Tensors& t, std::map<std::string, std::string> metadata = {}) {
    fs::create_directories(p.parent_path());
    SafetensorsWriter w(p, t.specs, std::move(metadata));
    for (const TensorSpec& s : std::vector<TensorSpec>(w.specs())) w.write(s.name, t.bytes.at(s.name));
    w.finish();
    return p;
  }
  // An index in the Hugging Face format, written by hand: {"metadata": {...}, "weight_map": {...}}.
  static fs::path write_index(const fs::path& p, const std::vector<std::pair<std::string, std::string>>& weight_map,
                              const std::string& metadata_members = "\"total_size\": 0") {
    std::string text = "{\"metadata\": {" + metadata_members + "}, \"weight_map\": {";
    for (std::size_t i = 0; i < weight_map.size(); ++i)
      text += (i ? ", \"" : "\"") + weight_map[i].first + "\": \"" + weight_map[i].second + "\"";
    std::ofstream(p, std::ios::binary) << text + "}}\n";
    return p;
  }

  // Writes `t` through CheckpointWriter, in order(), and returns the files it reports.
  static std::vector<fs::path> write_checkpoint(const fs::path& p, const Tensors& t,
                                                const std::map<std::string, std::string>& metadata,
                                                CheckpointLayout layout = {}) {
    CheckpointWriter w(p, t.specs, metadata, layout);
    for (const TensorSpec& s : std::vector<TensorSpec>(w.order())) w.write(s.name, t.bytes.at(s.name));
    w.finish();
    return w.files();
  }

  // Every tensor of `t` is in `c` with its dtype, shape and bytes, and `c` holds nothing else.
  static void expect_tensors(const Checkpoint& c, const Tensors& t) {
    ASSERT_EQ(c.tensors().size(), t.specs.size());
    std::uint64_t total = 0;
    for (const TensorSpec& s : t.specs) {
      const TensorInfo& info = c.info(s.name);
      EXPECT_EQ(info.dtype, s.dtype) << s.name;
      EXPECT_EQ(info.shape, s.shape) << s.name;
      const auto got = c.bytes(s.name);
      const std::vector<std::byte>& want = t.bytes.at(s.name);
      EXPECT_TRUE(std::equal(got.begin(), got.end(), want.begin(), want.end())) << s.name;
      total += want.size();
    }
    EXPECT_EQ(c.total_bytes(), total);
    for (std::size_t i = 1; i < c.tensors().size(); ++i) EXPECT_LT(c.tensors()[i - 1].name, c.tensors()[i].name);
  }

  fs::path dir_;
};

// A few tensors of mixed dtypes, as a model's state dict has.
Tensors small_model() {
  Tensors t;
  t.add("proj_out.weight", DType::bf16, {8, 16});
  t.add("proj_out.bias", DType::bf16, {8});
  t.add("blocks.0.attn.to_q.weight", DType::f32, {16, 16});
  t.add("blocks.0.attn.to_q.bias", DType::f16, {16});
  t.add("blocks.1.attn.to_q.weight", DType::f32, {16, 16});
  t.add("step", DType::i64, {});
  return t;
}

// ---------------------------------------------------------------- reader

class ReadCheckpoint : public TempDir {};

TEST_F(ReadCheckpoint, OpensASingleFile) {
  const Tensors t = small_model();
  const fs::path p = write_file(file("w.safetensors"), t, {{"format", "pt"}});
  const Checkpoint c(p);
  EXPECT_EQ(c.path(), p);
  EXPECT_EQ(c.shard_count(), 1u);
  expect_tensors(c, t);
  EXPECT_EQ(c.file_of("step"), p);
  EXPECT_EQ(c.metadata(), (std::map<std::string, std::string>{{"format", "pt"}}));
  EXPECT_PATH_ERROR(c.info("nope"), p, "no tensor named 'nope'");
  EXPECT_PATH_ERROR(c.bytes("nope"), p, "'nope'");
  EXPECT_PATH_ERROR(Checkpoint(file("missing.safetensors")), file("missing.safetensors"), "no such file");
}

TEST_F(ReadCheckpoint, ReadsEveryTensorOfAShardedCheckpoint) {
  const Tensors t = small_model();
  const fs::path folder = file("model");
  const Tensors first = t.only({"blocks.0.attn.to_q.bias", "blocks.0.attn.to_q.weight"});
  const Tensors second = t.only({"blocks.1.attn.to_q.weight", "step"});
  const Tensors third = t.only({"proj_out.bias", "proj_out.weight"});
  write_file(folder / "m-00001-of-00003.safetensors", first, {{"format", "pt"}});
  write_file(folder / "m-00002-of-00003.safetensors", second, {{"format", "pt"}});
  write_file(folder / "m-00003-of-00003.safetensors", third, {{"format", "pt"}});
  const fs::path index = write_index(folder / "m.safetensors.index.json",
                                     {{"proj_out.weight", "m-00003-of-00003.safetensors"},
                                      {"step", "m-00002-of-00003.safetensors"},
                                      {"blocks.0.attn.to_q.weight", "m-00001-of-00003.safetensors"},
                                      {"proj_out.bias", "m-00003-of-00003.safetensors"},
                                      {"blocks.1.attn.to_q.weight", "m-00002-of-00003.safetensors"},
                                      {"blocks.0.attn.to_q.bias", "m-00001-of-00003.safetensors"}},
                                     "\"total_size\": 1234, \"format\": \"index\", \"tool\": {\"v\": 2}");
  const Checkpoint c(index);
  EXPECT_EQ(c.shard_count(), 3u);
  expect_tensors(c, t);
  EXPECT_EQ(c.file_of("step"), folder / "m-00002-of-00003.safetensors");
  EXPECT_EQ(c.file_of("proj_out.bias"), folder / "m-00003-of-00003.safetensors");
  // The shard's own entry wins over the index's; the index adds what the shard lacks (non-strings
  // as compact JSON); total_size describes the index only.
  EXPECT_EQ(c.metadata(), (std::map<std::string, std::string>{{"format", "pt"}, {"tool", "{\"v\":2}"}}));
}

TEST_F(ReadCheckpoint, OpensAFolderByEachNameDiffusersAndTransformersUse) {
  const Tensors t = small_model();
  for (const std::string base : {"diffusion_pytorch_model", "model"}) {
    const fs::path single = file("single_" + base);
    write_file(single / (base + ".safetensors"), t);
    const Checkpoint one(single);
    EXPECT_EQ(one.shard_count(), 1u) << base;
    expect_tensors(one, t);

    const fs::path sharded = file("sharded_" + base);
    const std::string shard1 = base + "-00001-of-00002.safetensors", shard2 = base + "-00002-of-00002.safetensors";
    write_file(sharded / shard1, t.only({"blocks.0.attn.to_q.bias", "blocks.0.attn.to_q.weight", "blocks.1.attn.to_q.weight"}));
    write_file(sharded / shard2, t.only({"proj_out.bias", "proj_out.weight", "step"}));
    write_index(sharded / (base + ".safetensors.index.json"),
                {{"blocks.0.attn.to_q.bias", shard1}, {"blocks.0.attn.to_q.weight", shard1},
                 {"blocks.1.attn.to_q.weight", shard1}, {"proj_out.bias", shard2}, {"proj_out.weight", shard2},
                 {"step", shard2}});
    put(sharded / "config.json", "{}");  // what else a diffusers folder holds is not a candidate
    const Checkpoint two(sharded);
    EXPECT_EQ(two.shard_count(), 2u) << base;
    expect_tensors(two, t);
  }
}

TEST_F(ReadCheckpoint, FolderErrorsNameTheFolder) {
  const Tensors t = small_model();
  const fs::path two = file("two");
  write_file(two / "diffusion_pytorch_model.safetensors", t);
  write_file(two / "model.safetensors", t);
  EXPECT_PATH_ERROR(Checkpoint{two}, two, "more than one checkpoint");

  const fs::path none = file("none");
  put(none / "config.json", "{}");
  put(none / "weights.safetensors.bak", "x");
  EXPECT_PATH_ERROR(Checkpoint{none}, none, "no model weights");

  // A diffusers pipeline folder keeps the transformer's weights one level down: say so.
  const fs::path pipeline = file("pipeline");
  write_file(pipeline / "transformer" / "diffusion_pytorch_model.safetensors", t);
  EXPECT_PATH_ERROR(Checkpoint{pipeline}, pipeline, "transformer/");
}

// An output that is one of the input's files, or a folder holding one, is refused before anything is
// written: CheckpointWriter would replace the file, or remove the input's shards as stale ones.
TEST_F(ReadCheckpoint, AnOutputOverTheInputIsRefused) {
  const Tensors t = small_model();
  const fs::path one = write_file(file("a/w.safetensors"), t);
  const Checkpoint single(one);
  EXPECT_EQ(single.files(), std::vector<fs::path>{one});
  EXPECT_PATH_ERROR(refuse_output_over_input(single, one, "quantize"), one, "this is the input");
  EXPECT_PATH_ERROR(refuse_output_over_input(single, file("a"), "quantize"), file("a"), "this folder holds the input");
  EXPECT_PATH_ERROR(refuse_output_over_input(single, file("a/../a/w.safetensors"), "cast"), file("a/../a/w.safetensors"),
                    "cast: this is the input");
  fs::create_hard_link(one, file("hard.safetensors"));  // the same file under another name
  EXPECT_PATH_ERROR(refuse_output_over_input(single, file("hard.safetensors"), "export"), file("hard.safetensors"),
                    "replace");
  fs::create_directory_symlink(file("a"), file("link"));
  EXPECT_PATH_ERROR(refuse_output_over_input(single, file("link"), "export"), file("link"), "this folder holds");
  // Elsewhere is fine, whether it exists yet or not, and so is a new file beside the input.
  for (const fs::path& ok : {file("b"), file("a/sub"), file("a/other.safetensors"), file("a/x/w.safetensors")})
    EXPECT_NO_THROW(refuse_output_over_input(single, ok, "quantize")) << ok;

  const fs::path folder = file("sharded");
  write_file(folder / "m-00001-of-00002.safetensors", t.only({"proj_out.bias", "proj_out.weight"}));
  write_file(folder / "m-00002-of-00002.safetensors", t.only({"blocks.0.attn.to_q.bias", "blocks.0.attn.to_q.weight",
                                                            "blocks.1.attn.to_q.weight", "step"}));
  const fs::path index = write_index(folder / "m.safetensors.index.json",
                                     {{"proj_out.weight", "m-00001-of-00002.safetensors"},
                                      {"proj_out.bias", "m-00001-of-00002.safetensors"},
                                      {"blocks.0.attn.to_q.weight", "m-00002-of-00002.safetensors"},
                                      {"blocks.0.attn.to_q.bias", "m-00002-of-00002.safetensors"},
                                      {"blocks.1.attn.to_q.weight", "m-00002-of-00002.safetensors"},
                                      {"step", "m-00002-of-00002.safetensors"}});
  const Checkpoint sharded(index);
  EXPECT_EQ(sharded.files(), (std::vector<fs::path>{folder / "m-00001-of-00002.safetensors",
                                                    folder / "m-00002-of-00002.safetensors", index}));
  EXPECT_PATH_ERROR(refuse_output_over_input(sharded, folder / "m-00002-of-00002.safetensors", "quantize"),
                    folder / "m-00002-of-00002.safetensors", "this is the input");
  EXPECT_PATH_ERROR(refuse_output_over_input(sharded, index, "quantize"), index, "this is the input");
  EXPECT_PATH_ERROR(refuse_output_over_input(sharded, folder, "quantize"), folder, "this folder holds the input");
  EXPECT_NO_THROW(refuse_output_over_input(sharded, file("a"), "quantize"));
}

class ShardedErrors : public TempDir {
 protected:
  // Two good shards of small_model(); each test then writes a wrong index or shard.
  void SetUp() override {
    TempDir::SetUp();
    index = file("x.safetensors.index.json");
    write_file(file("a.safetensors"), t.only({"blocks.0.attn.to_q.weight", "blocks.0.attn.to_q.bias"}));
    write_file(file("b.safetensors"), t.only({"proj_out.weight", "proj_out.bias"}));
  }
  const Tensors t = small_model();
  fs::path index;  // set in SetUp, once the folder exists
  const std::vector<std::pair<std::string, std::string>> good = {{"blocks.0.attn.to_q.weight", "a.safetensors"},
                                                                 {"blocks.0.attn.to_q.bias", "a.safetensors"},
                                                                 {"proj_out.weight", "b.safetensors"},
                                                                 {"proj_out.bias", "b.safetensors"}};
};

TEST_F(ShardedErrors, TheGoodIndexReads) {
  write_index(index, good);
  expect_tensors(Checkpoint(index), t.only({"blocks.0.attn.to_q.weight", "blocks.0.attn.to_q.bias", "proj_out.weight",
                                            "proj_out.bias"}));
}

TEST_F(ShardedErrors, IndexNamingAMissingShard) {
  auto map = good;
  map[2].second = map[3].second = "c.safetensors";
  write_index(index, map);
  EXPECT_PATH_ERROR(Checkpoint{index}, index, "\"c.safetensors\", which does not exist");
}

TEST_F(ShardedErrors, TensorListedButAbsentFromItsShard) {
  auto map = good;
  map.push_back({"blocks.1.attn.to_q.weight", "a.safetensors"});
  write_index(index, map);
  EXPECT_PATH_ERROR(Checkpoint{index}, index, "'blocks.1.attn.to_q.weight'");
  EXPECT_PATH_ERROR(Checkpoint{index}, index, "does not hold it");
  // Listed in one shard, held by the other.
  map = good;
  map[2].second = "a.safetensors";
  write_index(index, map);
  EXPECT_PATH_ERROR(Checkpoint{index}, index, "'proj_out.weight' in shard \"a.safetensors\"");
}

TEST_F(ShardedErrors, TensorPresentInTwoShards) {
  write_file(file("b.safetensors"), t.only({"proj_out.weight", "proj_out.bias", "blocks.0.attn.to_q.bias"}));
  write_index(index, good);
  EXPECT_PATH_ERROR(Checkpoint{index}, index, "'blocks.0.attn.to_q.bias' is in two shards");
  const std::string message = error_of([&] { Checkpoint{index}; });
  EXPECT_NE(message.find("a.safetensors"), std::string::npos) << message;
  EXPECT_NE(message.find("b.safetensors"), std::string::npos) << message;
}

TEST_F(ShardedErrors, ShardHoldingATensorTheIndexDoesNotList) {
  auto map = good;
  map.pop_back();  // proj_out.bias is still in b.safetensors
  write_index(index, map);
  EXPECT_PATH_ERROR(Checkpoint{index}, index, "holds tensor 'proj_out.bias', which weight_map does not list");
}

TEST_F(ShardedErrors, MalformedIndexJson) {
  put(index, "{\"weight_map\": {\"proj_out.weight\": \"b.safetensors\"");  // truncated
  EXPECT_PATH_ERROR(Checkpoint{index}, index, "not valid JSON");
  put(index, "[\"a.safetensors\"]");
  EXPECT_PATH_ERROR(Checkpoint{index}, index, "expected an object");
  put(index, "{\"metadata\": {}}");
  EXPECT_PATH_ERROR(Checkpoint{index}, index, "no \"weight_map\"");
  put(index, "{\"weight_map\": {\"proj_out.weight\": 3}}");
  EXPECT_PATH_ERROR(Checkpoint{index}, index, "'proj_out.weight'");
  // Two entries for one tensor would make its shard ambiguous.
  put(index, "{\"weight_map\": {\"proj_out.weight\": \"a.safetensors\", \"proj_out.weight\": \"b.safetensors\"}}");
  EXPECT_PATH_ERROR(Checkpoint{index}, index, "repeats the key \"proj_out.weight\"");
  // A shard name must not leave the index's folder.
  put(index, "{\"weight_map\": {\"proj_out.weight\": \"../b.safetensors\"}}");
  EXPECT_PATH_ERROR(Checkpoint{index}, index, "plain file name");
}

// ---------------------------------------------------------------- writer

class WriteCheckpoint : public TempDir {};

const std::map<std::string, std::string> kMeta = {{"format", "pt"}, {"generator", "test"}};

TEST_F(WriteCheckpoint, OneFileWhenEverythingFits) {
  const Tensors t = small_model();
  const fs::path out = file("out");  // does not exist yet: created
  EXPECT_EQ(write_checkpoint(out, t, kMeta), std::vector<fs::path>{"diffusion_pytorch_model.safetensors"});
  EXPECT_EQ(listing(out), std::vector<std::string>{"diffusion_pytorch_model.safetensors"});
  const Checkpoint c(out);
  expect_tensors(c, t);
  EXPECT_EQ(c.metadata(), kMeta);

  // A ".safetensors" path is one file whatever the shard limit.
  const fs::path single = file("one.safetensors");
  EXPECT_EQ(write_checkpoint(single, t, kMeta, {1, "ignored"}), std::vector<fs::path>{"one.safetensors"});
  expect_tensors(Checkpoint(single), t);
  EXPECT_EQ(listing(dir_), (std::vector<std::string>{"one.safetensors", "out"}));
}

TEST_F(WriteCheckpoint, ShardsAndAHuggingFaceIndexWhenTheLimitIsSmall) {
  // Sorted by name, with a 100-byte limit: a+b fill 80 (c would pass 100), c alone (d is oversized),
  // d alone, then e+f (60).
  Tensors t;
  for (const auto& [name, size] : std::vector<std::pair<std::string, std::int64_t>>{
           {"f", 30}, {"d", 150}, {"b", 40}, {"e", 30}, {"a", 40}, {"c", 40}})
    t.add_bytes(name, size);
  const fs::path out = file("out");
  const std::vector<fs::path> files = write_checkpoint(out, t, kMeta, {100, "base"});
  const std::vector<std::string> shards = {"base-00001-of-00004.safetensors", "base-00002-of-00004.safetensors",
                                           "base-00003-of-00004.safetensors", "base-00004-of-00004.safetensors"};
  std::vector<fs::path> expected_files(shards.begin(), shards.end());
  expected_files.emplace_back("base.safetensors.index.json");
  EXPECT_EQ(files, expected_files);
  std::vector<std::string> expected_listing(shards);
  expected_listing.push_back("base.safetensors.index.json");
  EXPECT_EQ(listing(out), expected_listing);

  // The index as diffusers writes it: json.dumps(index, indent=2, sort_keys=True) + "\n".
  const std::string index_text =
      "{\n"
      "  \"metadata\": {\n"
      "    \"total_size\": 330\n"
      "  },\n"
      "  \"weight_map\": {\n"
      "    \"a\": \"base-00001-of-00004.safetensors\",\n"
      "    \"b\": \"base-00001-of-00004.safetensors\",\n"
      "    \"c\": \"base-00002-of-00004.safetensors\",\n"
      "    \"d\": \"base-00003-of-00004.safetensors\",\n"
      "    \"e\": \"base-00004-of-00004.safetensors\",\n"
      "    \"f\": \"base-00004-of-00004.safetensors\"\n"
      "  }\n"
      "}\n";
  EXPECT_EQ(slurp(out / "base.safetensors.index.json"), index_text);

  const std::vector<std::vector<std::string>> held = {{"a", "b"}, {"c"}, {"d"}, {"e", "f"}};
  for (std::size_t i = 0; i < shards.size(); ++i) {
    const SafetensorsFile shard(out / shards[i]);
    EXPECT_EQ(shard.metadata(), kMeta) << shards[i];
    std::vector<std::string> names;
    for (const TensorInfo& info : shard.tensors()) names.push_back(info.name);
    EXPECT_EQ(names, held[i]) << shards[i];
  }
  const Checkpoint c(out / "base.safetensors.index.json");
  EXPECT_EQ(c.shard_count(), 4u);
  expect_tensors(c, t);
  EXPECT_EQ(c.metadata(), kMeta);
}

TEST_F(WriteCheckpoint, ShardBoundariesAtTheLimit) {
  // The limit is inclusive: a shard may hold exactly max_shard_bytes.
  const auto shard_names = [&](const std::vector<std::pair<std::string, std::int64_t>>& sizes, const std::string& folder) {
    Tensors t;
    for (const auto& [name, size] : sizes) t.add_bytes(name, size);
    write_checkpoint(file(folder), t, {}, {100, "model"});  // a name Checkpoint finds in a folder
    const Checkpoint c(file(folder));
    std::vector<std::string> where;
    for (const TensorInfo& info : c.tensors()) where.push_back(info.name + "@" + c.file_of(info.name).filename().string());
    return where;
  };
  EXPECT_EQ(shard_names({{"a", 60}, {"b", 40}}, "fits"), (std::vector<std::string>{"a@model.safetensors", "b@model.safetensors"}));
  EXPECT_EQ(shard_names({{"a", 100}, {"b", 1}}, "full"),
            (std::vector<std::string>{"a@model-00001-of-00002.safetensors", "b@model-00002-of-00002.safetensors"}));
  // An oversized first tensor is alone in the first shard, and the next one starts a new shard.
  EXPECT_EQ(shard_names({{"a", 150}, {"b", 30}, {"c", 30}}, "oversized"),
            (std::vector<std::string>{"a@model-00001-of-00002.safetensors", "b@model-00002-of-00002.safetensors",
                                      "c@model-00002-of-00002.safetensors"}));
  // An oversized last tensor leaves no empty shard behind it.
  EXPECT_EQ(shard_names({{"a", 30}, {"b", 150}}, "oversized_last"),
            (std::vector<std::string>{"a@model-00001-of-00002.safetensors", "b@model-00002-of-00002.safetensors"}));
}

TEST_F(WriteCheckpoint, TheOrderOfTheSpecsDoesNotChangeTheBytes) {
  Tensors t = small_model();
  t.add("blocks.0.norm.weight", DType::f64, {3});
  t.add("a_big_one", DType::bf16, {64, 8});
  Tensors reversed = t;
  std::reverse(reversed.specs.begin(), reversed.specs.end());
  Tensors rotated = t;
  std::rotate(rotated.specs.begin(), rotated.specs.begin() + 3, rotated.specs.end());
  write_checkpoint(file("one"), t, kMeta, {600, "m"});
  write_checkpoint(file("two"), reversed, kMeta, {600, "m"});
  write_checkpoint(file("three"), rotated, kMeta, {600, "m"});
  const auto one = contents(file("one"));
  EXPECT_GT(one.size(), 2u);  // really sharded: the order of the shards is part of what is compared
  EXPECT_EQ(contents(file("two")), one);
  EXPECT_EQ(contents(file("three")), one);
}

TEST_F(WriteCheckpoint, AnUnfinishedWriterLeavesNothing) {
  Tensors t;
  for (const char* name : {"a", "b", "c", "d"}) t.add_bytes(name, 40);
  // Into a folder it creates: a whole shard written, the next one begun, then abandoned.
  const fs::path out = file("out");
  {
    CheckpointWriter w(out, t.specs, kMeta, {80, "m"});
    for (const char* name : {"a", "b", "c"}) w.write(name, t.bytes.at(name));
  }
  EXPECT_FALSE(fs::exists(out));
  EXPECT_TRUE(listing(dir_).empty());

  // Over a previous checkpoint: it is left as it was, byte for byte.
  write_checkpoint(out, t, kMeta, {80, "m"});
  put(out / "config.json", "{}");
  const auto before = contents(out);
  Tensors other;
  for (const char* name : {"a", "b", "c", "d", "e"}) other.add_bytes(name, 41);
  {
    CheckpointWriter w(out, other.specs, {}, {90, "m"});
    for (const char* name : {"a", "b", "c", "d"}) w.write(name, other.bytes.at(name));
  }
  EXPECT_EQ(contents(out), before);
  {
    const fs::path single = out / "m-00001-of-00002.safetensors";  // a file output over an existing file
    CheckpointWriter w(single, other.specs, {});
    w.write("a", other.bytes.at("a"));
  }
  EXPECT_EQ(contents(out), before);
  expect_tensors(Checkpoint(out / "m.safetensors.index.json"), t);
}

TEST_F(WriteCheckpoint, FinishRemovesStaleShardsOfTheSameBaseNameOnly) {
  Tensors t;
  for (const char* name : {"a", "b", "c", "d"}) t.add_bytes(name, 40);
  const fs::path out = file("out");
  write_checkpoint(out, t, kMeta, {40, "m"});  // four shards
  EXPECT_EQ(listing(out).size(), 5u);
  // Files a save of base "m" cannot have written, which must survive.
  const std::vector<std::string> others = {"config.json", "other-00001-of-00002.safetensors", "m-1-of-2.safetensors",
                                           "m.safetensors.bak", "mm.safetensors", "m-00001-of-00002.safetensors.txt"};
  for (const std::string& name : others) put(out / name, name);

  // Two shards now: the four old ones and the old index go, the new index replaces it.
  write_checkpoint(out, t, kMeta, {80, "m"});
  std::vector<std::string> expected = others;
  for (const char* name : {"m-00001-of-00002.safetensors", "m-00002-of-00002.safetensors", "m.safetensors.index.json"})
    expected.push_back(name);
  std::sort(expected.begin(), expected.end());
  EXPECT_EQ(listing(out), expected);
  for (const std::string& name : others) EXPECT_EQ(slurp(out / name), name);
  expect_tensors(Checkpoint(out / "m.safetensors.index.json"), t);

  // One file now: the shards and the index go.
  Tensors smaller = t.only({"a", "b"});
  write_checkpoint(out, smaller, kMeta, {80, "m"});
  expected = others;
  expected.push_back("m.safetensors");
  std::sort(expected.begin(), expected.end());
  EXPECT_EQ(listing(out), expected);
  expect_tensors(Checkpoint(out / "m.safetensors"), smaller);

  // And back to shards: the single file goes.
  write_checkpoint(out, t, kMeta, {80, "m"});
  EXPECT_FALSE(fs::exists(out / "m.safetensors"));
  EXPECT_TRUE(fs::exists(out / "m.safetensors.index.json"));
}

TEST_F(WriteCheckpoint, WriteAndFinishCheckTheirInput) {
  Tensors t;
  for (const char* name : {"a", "b", "c"}) t.add_bytes(name, 40);
  const fs::path out = file("out");
  CheckpointWriter w(out, t.specs, {}, {80, "m"});
  EXPECT_PATH_ERROR(w.write("a", pattern(39, 0)), out, "got 39 bytes, expected 40");
  EXPECT_PATH_ERROR(w.write("a", pattern(41, 0)), out, "got 41 bytes, expected 40");
  EXPECT_PATH_ERROR(w.write("b", t.bytes.at("b")), out, "expected tensor 'a' next");
  w.write("a", t.bytes.at("a"));
  EXPECT_PATH_ERROR(w.finish(), out, "'b' is next");
  w.write("b", t.bytes.at("b"));
  w.write("c", t.bytes.at("c"));
  EXPECT_PATH_ERROR(w.write("c", t.bytes.at("c")), out, "already written");
  w.finish();
  EXPECT_PATH_ERROR(w.finish(), out, "twice");
  expect_tensors(Checkpoint(out / "m.safetensors.index.json"), t);

  const std::vector<TensorSpec> twice = {{"x", DType::u8, {1}}, {"x", DType::u8, {2}}};
  EXPECT_PATH_ERROR(CheckpointWriter(file("dup"), twice, {}), file("dup"), "two tensors are named 'x'");
  EXPECT_FALSE(fs::exists(file("dup")));
  EXPECT_PATH_ERROR(CheckpointWriter(file("zero"), t.specs, {}, {0, "m"}), file("zero"), "max_shard_bytes");
  EXPECT_PATH_ERROR(CheckpointWriter(file("slash"), t.specs, {}, {80, "sub/m"}), file("slash"), "plain file name");
}

TEST_F(WriteCheckpoint, AnEmptyCheckpointIsOneFileWithoutTensors) {
  const fs::path out = file("out");
  EXPECT_EQ(write_checkpoint(out, Tensors{}, kMeta), std::vector<fs::path>{"diffusion_pytorch_model.safetensors"});
  const Checkpoint c(out);
  EXPECT_TRUE(c.tensors().empty());
  EXPECT_EQ(c.metadata(), kMeta);
}

// ---------------------------------------------------------------- the quantized layer table

// The loraq.layers metadata comes from a file, so it is read as strictly as the header around it.
std::string one_layer(const std::string& shape, const std::string& rank, const std::string& extra = "") {
  return R"([{"name": "a.weight", "shape": )" + shape +
         R"(, "dtype": "BF16", "method": "loraq", "residual": "sint4", "branch": "mxint8", "rank": )" + rank +
         R"(, "smoothed": false)" + extra + "}]";
}

TEST(LayerTable, WhatIsWrittenReadsBack) {
  loraq::QuantizedLayerInfo a, b;
  a.weight_name = "blocks.0.attn.to_q.weight", a.shape = {1152, 1152}, a.dtype = DType::bf16, a.method = "loraq";
  a.residual_format = loraq::Format::sint4, a.branch_format = loraq::Format::mxint8, a.rank = 62, a.smoothed = true;
  a.residual_activation = loraq::Format::mxint8, a.intermediate_activation = loraq::Format::mxint8;
  b.weight_name = "proj.weight", b.shape = {64, 32, 1, 1}, b.dtype = DType::f16, b.method = "rtn";
  b.residual_format = loraq::Format::mxfp4;
  const auto back = loraq::decode_layer_table(loraq::encode_layer_table({a, b}), "m");
  ASSERT_EQ(back.size(), 2u);
  EXPECT_EQ(back[0].weight_name, a.weight_name);
  EXPECT_EQ(back[0].shape, a.shape);
  EXPECT_EQ(back[0].in_features, 1152);
  EXPECT_EQ(back[0].branch_format, a.branch_format);
  EXPECT_EQ(back[0].rank, 62);
  EXPECT_TRUE(back[0].smoothed);
  EXPECT_EQ(back[0].residual_activation, a.residual_activation);
  EXPECT_FALSE(back[0].branch_activation.has_value());
  EXPECT_EQ(back[0].intermediate_activation, a.intermediate_activation);
  EXPECT_EQ(back[1].shape, b.shape);
  EXPECT_EQ(back[1].out_features, 64);
  EXPECT_EQ(back[1].in_features, 32);
  EXPECT_EQ(back[1].dtype, DType::f16);
  EXPECT_FALSE(back[1].branch_format.has_value());
}

TEST(LayerTable, HostileValuesAreRefusedByName) {
  auto refused = [](const std::string& json, const std::string& expected) {
    try {
      loraq::decode_layer_table(json, "m.safetensors");
      ADD_FAILURE() << json << ": accepted, expected an error with \"" << expected << "\"";
    } catch (const loraq::Error& e) {
      EXPECT_NE(std::string(e.what()).find("m.safetensors"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(expected), std::string::npos) << e.what() << "\nexpected: " << expected;
    }
  };
  EXPECT_EQ(loraq::decode_layer_table(one_layer("[8, 32]", "4"), "m")[0].rank, 4);
  // Numbers that get<int>() would have cast: out of range (undefined behaviour) or truncated.
  refused(one_layer("[8, 32]", "1e30"), "layer 'a.weight' of loraq.layers: rank: expected an integer in [0, 1048576], got 1e+30");
  refused(one_layer("[8, 32]", "4.5"), "rank: expected an integer");
  refused(one_layer("[8, 32]", "-1"), "rank: expected an integer in [0, 1048576], got -1");
  refused(one_layer("[8, 2.5]", "4"), "shape: expected an integer in [1, 16777216], got 2.5");
  refused(one_layer("[8, 1e300]", "4"), "shape: expected an integer");
  refused(one_layer("[0, 32]", "4"), "shape: expected an integer in [1, 16777216], got 0");
  refused(one_layer("[8, 32, 3]", "4"), "shape must be [out, in] or [out, in, 1, 1], got [8,32,3]");
  refused(one_layer("{\"out\": 8}", "4"), "shape is not a list");
  refused(one_layer("[8, 32]", "0"), "has rank 0 with a branch format");
  refused(one_layer("[8, 32]", "4", R"(, "rank": 5)"), "repeats the key \"rank\"");
  refused(one_layer("[8, 32]", "4", R"(, "note": [[[1]]])"), "nests deeper than 4 levels");
  refused(one_layer("[8, 32]", "4", R"(, "branch_activation": 7)"), "malformed loraq.layers metadata");
  const std::string a = one_layer("[8, 32]", "4");
  refused(a.substr(0, a.size() - 1) + "," + a.substr(1), "layer 'a.weight' of loraq.layers is listed twice");
  refused("{}", "loraq.layers is not a JSON array");
  refused("[{\"name\": ", "not valid JSON");
}

}  // namespace
