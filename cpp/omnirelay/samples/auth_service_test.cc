#include "omnirelay/samples/auth_service.h"

#include <gtest/gtest.h>

#include <chrono>

#include "omnirelay/samples/process.h"

namespace omnirelay::samples {
namespace {

class AuthServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auth::UserStoreOptions store_options;
    store_options.iterations = 1000;
    auto store = auth::UserStore::Open(":memory:", store_options);
    ASSERT_TRUE(store.ok());
    users_ = std::move(*store);
    codec_ = std::make_shared<auth::JwtCodec>("0123456789abcdef0123456789abcdef");
    service_ = std::make_unique<AuthService>(
        users_, codec_, AuthServiceOptions{.token_ttl = std::chrono::minutes(30)});
    std::string address;
    auto server = StartGrpcServer("127.0.0.1:0", {service_.get()}, &address);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
    stub_ = my_service::MyServiceAPI::NewStub(
        grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  }
  void TearDown() override {
    server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  }
  grpc::Status Login(const std::string& user, const std::string& password,
                     const std::string& session, my_service::LoginResponse* response) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    my_service::LoginRequest request;
    request.set_username(user);
    request.set_password(password);
    request.set_session_id(session);
    return stub_->Login(&context, request, response);
  }

  std::shared_ptr<auth::UserStore> users_;
  std::shared_ptr<auth::JwtCodec> codec_;
  std::unique_ptr<AuthService> service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<my_service::MyServiceAPI::Stub> stub_;
};

TEST_F(AuthServiceTest, LoginIssuesVerifiableToken) {
  my_service::LoginResponse response;
  const auto before = std::chrono::system_clock::now();
  ASSERT_TRUE(Login("testuser", "testpass", "session-1", &response).ok());
  EXPECT_EQ(response.role(), "user");
  auto claims = auth::VerifyRequest(*codec_, response.token(), "session-1");
  ASSERT_TRUE(claims.ok()) << claims.status();
  EXPECT_EQ(claims->username, "testuser");
  const auto expires =
      std::chrono::system_clock::time_point(std::chrono::seconds(response.expires_at().seconds()));
  EXPECT_EQ(expires, claims->expires_at);
  EXPECT_GE(expires, before + std::chrono::minutes(30) - std::chrono::seconds(1));
  EXPECT_LE(expires, std::chrono::system_clock::now() + std::chrono::minutes(30));
}

TEST_F(AuthServiceTest, LoginErrors) {
  my_service::LoginResponse response;
  struct Case {
    const char* user;
    const char* password;
    const char* session;
    grpc::StatusCode code;
    const char* message;
  };
  for (const Case& c : {
           Case{"", "testpass", "s", grpc::StatusCode::INVALID_ARGUMENT, "username is required"},
           Case{"", "", "", grpc::StatusCode::INVALID_ARGUMENT, "username is required"},
           Case{"testuser", "testpass", "", grpc::StatusCode::INVALID_ARGUMENT,
                "session_id is required"},
           Case{"testuser", "wrong", "s", grpc::StatusCode::PERMISSION_DENIED,
                "invalid username or password"},
           Case{"nobody", "testpass", "s", grpc::StatusCode::PERMISSION_DENIED,
                "invalid username or password"},
       }) {
    const grpc::Status status = Login(c.user, c.password, c.session, &response);
    EXPECT_EQ(status.error_code(), c.code) << c.user << "/" << c.password << "/" << c.session;
    EXPECT_EQ(status.error_message(), c.message);
  }
}

TEST_F(AuthServiceTest, MyServiceMethodsAreNotServedHere) {
  grpc::ClientContext context;
  my_service::EchoResponse response;
  const grpc::Status status = stub_->MyServiceEcho(&context, my_service::EchoRequest(), &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNIMPLEMENTED);
}

}  // namespace
}  // namespace omnirelay::samples
