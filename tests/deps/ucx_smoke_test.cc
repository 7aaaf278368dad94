// Proves UCX 1.13 links and starts here: a UCP context and worker over the
// transports this machine has (tcp, shared memory), and a worker address.
#include <ucp/api/ucp.h>

#include "gtest/gtest.h"

namespace {

TEST(UcxSmoke, ContextAndWorkerStartOverTcpAndShm) {
  ucp_config_t* config = nullptr;
  ASSERT_EQ(ucp_config_read(nullptr, nullptr, &config), UCS_OK);
  ASSERT_EQ(ucp_config_modify(config, "TLS", "tcp,posix,sysv,cma,self"), UCS_OK);
  ucp_params_t params{};
  params.field_mask = UCP_PARAM_FIELD_FEATURES;
  params.features = UCP_FEATURE_AM | UCP_FEATURE_RMA;
  ucp_context_h context = nullptr;
  ASSERT_EQ(ucp_init(&params, config, &context), UCS_OK);
  ucp_config_release(config);

  ucp_worker_params_t wparams{};
  wparams.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
  wparams.thread_mode = UCS_THREAD_MODE_SINGLE;
  ucp_worker_h worker = nullptr;
  ASSERT_EQ(ucp_worker_create(context, &wparams, &worker), UCS_OK);

  ucp_address_t* address = nullptr;
  size_t length = 0;
  ASSERT_EQ(ucp_worker_get_address(worker, &address, &length), UCS_OK);
  EXPECT_GT(length, 0u);
  ucp_worker_release_address(worker, address);
  ucp_worker_destroy(worker);
  ucp_cleanup(context);
}

}  // namespace
