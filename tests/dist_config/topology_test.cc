// The topology from the launcher's environment, through an injected lookup (the
// process environment is never touched): Open MPI's variables first, then
// torchrun's, then the defaults; explicit values win; malformed values are errors
// naming the variable and its value.
#include <map>
#include <string>

#include "tests/dist_config/config_test_util.h"

namespace {

using da_config_test::Fails;
using Env = std::map<std::string, std::string>;

const char* Lookup(void* ctx, const char* name) {
  const Env* env = static_cast<const Env*>(ctx);
  auto it = env->find(name);
  return it == env->end() ? nullptr : it->second.c_str();
}

struct Resolved {
  da_status status;
  da_config_topology t;
};

Resolved Resolve(const Env& env, da_config_topology start = {0, -1, 0}) {
  da_config c = da_config_default();
  c.topology = start;
  Resolved r;
  r.status = da_config_resolve_topology(&c, Lookup, const_cast<Env*>(&env));
  r.t = c.topology;
  return r;
}

void ExpectTopology(const Resolved& r, int world, int rank, int local) {
  ASSERT_EQ(r.status, DA_STATUS_SUCCESS) << da_last_error();
  EXPECT_EQ(r.t.world_size, world);
  EXPECT_EQ(r.t.rank, rank);
  EXPECT_EQ(r.t.local_world_size, local);
}

TEST(TopologyTest, NothingSetIsOneRank) { ExpectTopology(Resolve({}), 1, 0, 1); }

TEST(TopologyTest, OpenMpiVariables) {
  ExpectTopology(Resolve({{"OMPI_COMM_WORLD_SIZE", "16"},
                          {"OMPI_COMM_WORLD_RANK", "9"},
                          {"OMPI_COMM_WORLD_LOCAL_SIZE", "8"}}),
                 16, 9, 8);
}

TEST(TopologyTest, TorchrunVariables) {
  ExpectTopology(Resolve({{"WORLD_SIZE", "4"}, {"RANK", "2"}, {"LOCAL_WORLD_SIZE", "2"}}), 4, 2, 2);
  // No LOCAL_WORLD_SIZE: one node holds every rank.
  ExpectTopology(Resolve({{"WORLD_SIZE", "4"}, {"RANK", "3"}}), 4, 3, 4);
}

TEST(TopologyTest, OpenMpiWinsOverTorchrunPerField) {
  ExpectTopology(Resolve({{"OMPI_COMM_WORLD_SIZE", "8"},
                          {"OMPI_COMM_WORLD_RANK", "5"},
                          {"WORLD_SIZE", "2"},
                          {"RANK", "1"},
                          {"LOCAL_WORLD_SIZE", "4"}}),
                 8, 5, 4);
}

TEST(TopologyTest, ExplicitValuesWin) {
  const Env env = {{"OMPI_COMM_WORLD_SIZE", "8"},
                   {"OMPI_COMM_WORLD_RANK", "5"},
                   {"OMPI_COMM_WORLD_LOCAL_SIZE", "4"}};
  ExpectTopology(Resolve(env, {16, -1, 0}), 16, 5, 4);
  ExpectTopology(Resolve(env, {0, 0, 2}), 8, 0, 2);
  // Fully given: the environment is not read at all, even if it is malformed.
  ExpectTopology(Resolve({{"WORLD_SIZE", "garbage"}}, {2, 1, 1}), 2, 1, 1);
}

TEST(TopologyTest, MalformedVariablesNameThemselves) {
  struct Case {
    Env env;
    std::vector<std::string> parts;
  };
  const std::vector<Case> cases = {
      {{{"WORLD_SIZE", "four"}}, {"WORLD_SIZE='four'", "topology.world_size"}},
      {{{"WORLD_SIZE", ""}}, {"WORLD_SIZE=''"}},
      {{{"WORLD_SIZE", "8x"}}, {"WORLD_SIZE='8x'"}},
      {{{"WORLD_SIZE", "0"}}, {"WORLD_SIZE='0'", "[1, 1048576]"}},
      {{{"OMPI_COMM_WORLD_SIZE", "99999999999999"}}, {"OMPI_COMM_WORLD_SIZE='99999999999999'"}},
      {{{"WORLD_SIZE", "4"}, {"RANK", "-1"}}, {"RANK='-1'", "topology.rank"}},
      {{{"WORLD_SIZE", "4"}, {"RANK", "1"}, {"LOCAL_WORLD_SIZE", "1.5"}},
       {"LOCAL_WORLD_SIZE='1.5'", "topology.local_world_size"}},
  };
  for (const Case& c : cases) {
    Resolved r = Resolve(c.env);
    ::testing::AssertionResult ok = ::testing::AssertionSuccess();
    for (const std::string& p : c.parts)
      if (ok) ok = Fails(r.status, DA_STATUS_INVALID_ARGUMENT, {p, "environment"});
    EXPECT_TRUE(ok);
  }
}

TEST(TopologyTest, InconsistentResultsAreValidated) {
  EXPECT_TRUE(Fails(Resolve({{"WORLD_SIZE", "4"}, {"RANK", "4"}}).status,
                    DA_STATUS_INVALID_ARGUMENT, {"topology.rank=4", "world_size=4"}));
  EXPECT_TRUE(Fails(Resolve({{"WORLD_SIZE", "6"}, {"RANK", "0"}, {"LOCAL_WORLD_SIZE", "4"}}).status,
                    DA_STATUS_INVALID_ARGUMENT, {"topology.local_world_size=4", "world_size=6"}));
  // An explicit world size with a launcher rank beyond it.
  EXPECT_TRUE(Fails(Resolve({{"RANK", "7"}}, {4, -1, 0}).status, DA_STATUS_INVALID_ARGUMENT,
                    {"topology.rank=7"}));
}

TEST(TopologyTest, NullLookupReadsTheProcessEnvironment) {
  // Only reads: whatever this process has, the result is a valid topology.
  da_config c = da_config_default();
  da_status st = da_config_resolve_topology(&c, nullptr, nullptr);
  if (st == DA_STATUS_SUCCESS) {
    EXPECT_GE(c.topology.world_size, 1);
    EXPECT_GE(c.topology.rank, 0);
    EXPECT_LT(c.topology.rank, c.topology.world_size);
  } else {
    EXPECT_NE(std::string(da_last_error()).find("environment"), std::string::npos);
  }
  EXPECT_NE(da_config_resolve_topology(nullptr, nullptr, nullptr), DA_STATUS_SUCCESS);
}

}  // namespace
