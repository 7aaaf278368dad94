// Proves DPDK 22.11 links and its EAL initialises here without hugepages or PCI.
#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_lcore.h>
#include <rte_mempool.h>
#include <rte_mbuf.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace {

TEST(DpdkSmoke, EalInitWithoutHugepagesAndMbufPool) {
  std::string prefix = "genie_smoke_" + std::to_string(getpid());
  std::vector<std::string> args = {"genie_dpdk_smoke", "--no-huge", "-m", "128", "--no-pci",
                                   "--no-shconf", "-l", "0", "--file-prefix", prefix,
                                   "--log-level", "lib.eal:error"};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  ASSERT_GE(rte_eal_init(static_cast<int>(argv.size()), argv.data()), 0)
      << "rte_eal_init failed: " << rte_strerror(rte_errno);
  EXPECT_EQ(rte_lcore_count(), 1u);
  rte_mempool* pool = rte_pktmbuf_pool_create("smoke", 1023, 0, 0, RTE_MBUF_DEFAULT_BUF_SIZE,
                                              SOCKET_ID_ANY);
  ASSERT_NE(pool, nullptr) << rte_strerror(rte_errno);
  rte_mbuf* m = rte_pktmbuf_alloc(pool);
  ASSERT_NE(m, nullptr);
  EXPECT_GE(rte_pktmbuf_tailroom(m), 2048u);
  rte_pktmbuf_free(m);
  rte_mempool_free(pool);
  EXPECT_EQ(rte_eal_cleanup(), 0);
}

}  // namespace
