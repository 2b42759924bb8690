// Requests no libvb client would send, straight through the stub: each must get the right
// status and a message naming the field and the values, and the daemon must go on serving.
#include <grpcpp/client_context.h>

#include "client/daemon_target.h"
#include "client/remote_linear.h"
#include "common/digest.h"
#include "tests/integration/test_util.h"
#include "tests/support/daemon_process.h"
#include "wire/codec.h"

namespace vb::testing {
namespace {

using ::testing::HasSubstr;

struct Chunk {
  uint32_t index;
  std::string data;
};

std::string bytes_of(const at::Tensor& t) {
  const at::Tensor c = t.contiguous();
  return std::string(static_cast<const char*>(c.data_ptr()), c.numel() * c.element_size());
}

v1::TensorSpec spec(v1::DType dtype, std::vector<int64_t> shape) {
  v1::TensorSpec s;
  s.set_dtype(dtype);
  s.mutable_shape()->Assign(shape.begin(), shape.end());
  return s;
}

class BadInputTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { daemon_ = new DaemonProcess({"--max-request-bytes", "1MiB"}); }
  static void TearDownTestSuite() {
    delete daemon_;
    daemon_ = nullptr;
  }

  void SetUp() override {
    client_ = std::make_unique<DaemonClient>(daemon_->address());
    weight_ = torch::randn({4, 3});
    TransferCount transfer;
    ASSERT_TRUE(client_->upload_weight({sha256_hex(bytes_of(weight_)), weight_}, &transfer).ok());
  }

  // The daemon still answers, and correctly, after whatever the test sent.
  void TearDown() override {
    ASSERT_TRUE(client_->get_info().ok()) << "daemon stopped serving";
    const at::Tensor x = torch::randn({2, 3});
    TransferCount transfer;
    absl::StatusOr<at::Tensor> y =
        client_->linear_forward(x, {digest(), weight_}, at::Tensor(), &transfer);
    ASSERT_TRUE(y.ok()) << y.status();
    EXPECT_LT(relative_error(*y, x.mm(weight_.t())), 1e-6);
  }

  std::string digest() const { return sha256_hex(bytes_of(weight_)); }

  v1::LinearForwardHeader good_header(std::vector<int64_t> input_shape = {2, 3}) const {
    v1::LinearForwardHeader header;
    *header.mutable_input() = spec(v1::DTYPE_FLOAT32, input_shape);
    header.mutable_weight()->set_digest(digest());
    *header.mutable_weight()->mutable_spec() = spec(v1::DTYPE_FLOAT32, {4, 3});
    return header;
  }

  grpc::Status forward(const v1::LinearForwardHeader& header, const std::vector<Chunk>& chunks) {
    auto context = client_->new_context();
    auto stream = client_->stub().LinearForward(context.get());
    v1::LinearForwardRequest message;
    *message.mutable_header() = header;
    if (stream->Write(message)) {
      for (const Chunk& c : chunks) {
        message.mutable_chunk()->set_tensor_index(c.index);
        message.mutable_chunk()->set_data(c.data);
        if (!stream->Write(message)) break;
      }
    }
    stream->WritesDone();
    v1::TensorsResponse response;
    while (stream->Read(&response)) {
    }
    return stream->Finish();
  }

  grpc::Status upload(const std::string& digest, uint64_t byte_size,
                      const std::vector<std::string>& pieces) {
    auto context = client_->new_context();
    v1::UploadWeightResponse response;
    auto stream = client_->stub().UploadWeight(context.get(), &response);
    v1::UploadWeightRequest message;
    message.mutable_header()->set_digest(digest);
    message.mutable_header()->set_byte_size(byte_size);
    if (stream->Write(message)) {
      for (const std::string& piece : pieces) {
        message.set_data(piece);
        if (!stream->Write(message)) break;
      }
    }
    stream->WritesDone();
    return stream->Finish();
  }

  static void expect_status(const grpc::Status& status, grpc::StatusCode code,
                            const std::vector<std::string>& fragments) {
    EXPECT_EQ(status.error_code(), code) << status.error_message();
    for (const std::string& fragment : fragments) {
      EXPECT_THAT(status.error_message(), HasSubstr(fragment));
    }
  }

  static DaemonProcess* daemon_;
  std::unique_ptr<DaemonClient> client_;
  at::Tensor weight_;
};
DaemonProcess* BadInputTest::daemon_ = nullptr;

TEST_F(BadInputTest, ShapeMismatchBetweenInputAndWeight) {
  expect_status(forward(good_header({2, 5}), {{0, std::string(40, '\0')}}),
                grpc::StatusCode::INVALID_ARGUMENT,
                {"shape mismatch", "input.shape = [2, 5]", "in_features = 3"});
}

TEST_F(BadInputTest, DtypeMismatch) {
  v1::LinearForwardHeader header = good_header();
  *header.mutable_input() = spec(v1::DTYPE_BFLOAT16, {2, 3});
  expect_status(forward(header, {{0, std::string(12, '\0')}}), grpc::StatusCode::INVALID_ARGUMENT,
                {"dtype mismatch", "input.dtype = bfloat16", "weight.dtype = float32"});
}

TEST_F(BadInputTest, UnspecifiedDtype) {
  v1::LinearForwardHeader header = good_header();
  header.mutable_input()->set_dtype(v1::DTYPE_UNSPECIFIED);
  expect_status(forward(header, {}), grpc::StatusCode::INVALID_ARGUMENT,
                {"input.dtype = DTYPE_UNSPECIFIED"});
}

TEST_F(BadInputTest, NegativeDimension) {
  expect_status(forward(good_header({2, -3}), {}), grpc::StatusCode::INVALID_ARGUMENT,
                {"input.shape[1] = -3", "at least 1"});
}

TEST_F(BadInputTest, ZeroDimension) {
  expect_status(forward(good_header({0, 3}), {}), grpc::StatusCode::INVALID_ARGUMENT,
                {"input.shape[0] = 0", "at least 1"});
}

TEST_F(BadInputTest, OverflowingDimensions) {
  expect_status(forward(good_header({int64_t{1} << 31, int64_t{1} << 31, 3}), {}),
                grpc::StatusCode::INVALID_ARGUMENT, {"input.shape", "overflows"});
}

TEST_F(BadInputTest, MoreBytesThanTheShapeHolds) {
  expect_status(forward(good_header(), {{0, std::string(28, '\0')}}),
                grpc::StatusCode::INVALID_ARGUMENT,
                {"input received 28 bytes", "float32[2, 3] has 24 bytes"});
}

TEST_F(BadInputTest, ChunkStreamCutShort) {
  expect_status(forward(good_header(), {{0, std::string(16, '\0')}}),
                grpc::StatusCode::INVALID_ARGUMENT, {"stream ended after 16 of 24 bytes of input"});
}

TEST_F(BadInputTest, ChunkForATensorNobodyAnnounced) {
  expect_status(forward(good_header(), {{3, std::string(4, '\0')}}),
                grpc::StatusCode::INVALID_ARGUMENT, {"chunk.tensor_index = 3", "1 tensor(s)"});
}

TEST_F(BadInputTest, WeightSpecDisagreesWithStoredBytes) {
  v1::LinearForwardHeader header = good_header({2, 2});
  *header.mutable_weight()->mutable_spec() = spec(v1::DTYPE_FLOAT32, {3, 2});
  expect_status(forward(header, {{0, std::string(16, '\0')}}), grpc::StatusCode::INVALID_ARGUMENT,
                {"byte count mismatch", "float32[3, 2] needs 24 bytes", "names 48 bytes"});
}

TEST_F(BadInputTest, UploadWhoseBytesDoNotMatchTheDigest) {
  const std::string bytes(64, 'x');
  const std::string claimed = sha256_hex(std::string(64, 'y'));
  expect_status(upload(claimed, bytes.size(), {bytes}), grpc::StatusCode::INVALID_ARGUMENT,
                {"digest mismatch", claimed, sha256_hex(bytes)});
  absl::StatusOr<std::vector<bool>> held = client_->query_weights({claimed, sha256_hex(bytes)});
  ASSERT_TRUE(held.ok());
  EXPECT_EQ(*held, (std::vector<bool>{false, false})) << "nothing stored under either digest";
}

// ReleaseWeights checks every digest before it releases any: one malformed digest leaves
// the store as it was.
TEST_F(BadInputTest, ReleaseWithAMalformedDigestReleasesNothing) {
  absl::StatusOr<std::vector<bool>> released = client_->release_weights({digest(), "XYZ"});
  ASSERT_TRUE(absl::IsInvalidArgument(released.status())) << released.status();
  EXPECT_THAT(std::string(released.status().message()), HasSubstr("digests[1] = \"XYZ\""));
  absl::StatusOr<std::vector<bool>> held = client_->query_weights({digest()});
  ASSERT_TRUE(held.ok()) << held.status();
  EXPECT_EQ(*held, std::vector<bool>{true}) << "the well-formed digest was not released";
}

// A released weight is gone: the next call naming it gets NOT_FOUND until it is uploaded
// again; releasing it twice, or a digest never held, answers false.
TEST_F(BadInputTest, ReleasedWeightIsNotFoundUntilUploadedAgain) {
  const std::string unknown = sha256_hex("never uploaded");
  absl::StatusOr<std::vector<bool>> released =
      client_->release_weights({digest(), digest(), unknown});
  ASSERT_TRUE(released.ok()) << released.status();
  EXPECT_EQ(*released, (std::vector<bool>{true, false, false}));
  absl::StatusOr<std::vector<bool>> held = client_->query_weights({digest()});
  ASSERT_TRUE(held.ok()) << held.status();
  EXPECT_EQ(*held, std::vector<bool>{false});
  expect_status(forward(good_header(), {{0, std::string(24, '\0')}}), grpc::StatusCode::NOT_FOUND,
                {"weight.digest = " + digest(), "upload it"});
  TransferCount transfer;
  absl::StatusOr<v1::UploadWeightResponse> uploaded =
      client_->upload_weight({digest(), weight_}, &transfer);
  ASSERT_TRUE(uploaded.ok()) << uploaded.status();
  EXPECT_FALSE(uploaded->already_present()) << "the bytes were sent again";
  // TearDown runs a Linear on it.
}

TEST_F(BadInputTest, UploadCutShort) {
  const std::string bytes(64, 'z');
  expect_status(upload(sha256_hex(bytes), bytes.size(), {bytes.substr(0, 40)}),
                grpc::StatusCode::INVALID_ARGUMENT, {"upload stream ended after 40", "64 bytes"});
}

TEST_F(BadInputTest, UploadWithMalformedDigest) {
  expect_status(upload("ABC", 3, {"abc"}), grpc::StatusCode::INVALID_ARGUMENT,
                {"header.digest = \"ABC\"", "64 lowercase hex"});
}

TEST_F(BadInputTest, UnknownDigestIsNotFound) {
  v1::LinearForwardHeader header = good_header();
  const std::string unknown = sha256_hex("never uploaded");
  header.mutable_weight()->set_digest(unknown);
  expect_status(forward(header, {{0, std::string(24, '\0')}}), grpc::StatusCode::NOT_FOUND,
                {"weight.digest = " + unknown, "upload it"});
}

TEST_F(BadInputTest, BackwardWithoutTheInputItNeeds) {
  auto context = client_->new_context();
  auto stream = client_->stub().LinearBackward(context.get());
  v1::LinearBackwardRequest message;
  v1::LinearBackwardHeader* header = message.mutable_header();
  *header->mutable_grad_output() = spec(v1::DTYPE_FLOAT32, {2, 4});
  header->mutable_weight()->set_digest(digest());
  *header->mutable_weight()->mutable_spec() = spec(v1::DTYPE_FLOAT32, {4, 3});
  header->set_need_grad_weight(true);
  stream->Write(message);
  stream->WritesDone();
  v1::TensorsResponse response;
  while (stream->Read(&response)) {
  }
  expect_status(stream->Finish(), grpc::StatusCode::INVALID_ARGUMENT,
                {"input is missing", "need_grad_weight"});
}

TEST_F(BadInputTest, RequestOverTheSizeLimitIsRefusedAndTheRouterFallsBack) {
  // 600 x 3 x 4 bytes... too small; 100000 x 3 float32 = 1.2 MB > the daemon's 1 MiB limit.
  const at::Tensor x = torch::randn({100000, 3});
  TransferCount transfer;
  absl::StatusOr<at::Tensor> direct =
      client_->linear_forward(x, {digest(), weight_}, at::Tensor(), &transfer);
  ASSERT_TRUE(absl::IsResourceExhausted(direct.status())) << direct.status();
  EXPECT_THAT(std::string(direct.status().message()),
              HasSubstr("carries 1200000 bytes, over this daemon's limits.max_request_bytes = "
                        "1048576"));

  auto router = make_router({daemon_->address(), "local"});
  nn::RemoteLinear layer(nn::RemoteLinearOptions(3, 4).bias(false), router);
  {
    torch::NoGradGuard no_grad;
    layer->weight.copy_(weight_);
  }
  const at::Tensor y = layer->forward(x);
  EXPECT_LT(relative_error(y, x.mm(weight_.t())), 1e-6);
  const StatsSnapshot stats = layer->get_stats();
  EXPECT_EQ(stats.local_calls(), 1u);
  EXPECT_EQ(stats.fallbacks(), 1u);
  EXPECT_EQ(stats.targets.at(router->targets()[0]->name()).failures, 1u);
}

}  // namespace
}  // namespace vb::testing
