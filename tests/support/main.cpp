// SPDX-License-Identifier: BSL-1.0
// The doctest main of every test executable, with one guard: CTest runs each test case by name
// (doctest_discover_tests passes --test-case=<name>), and a name that the filter cannot match
// (Debian's doctest 2.4.9 discovery splits names at ';') would otherwise "pass" having run
// nothing. A run filtered by test case that runs no test case fails instead.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <atomic>
#include <cstdio>
#include <string_view>

namespace {

std::atomic<int> g_started{0};

struct count_test_cases : doctest::IReporter {
    explicit count_test_cases(const doctest::ContextOptions&) {}
    void report_query(const doctest::QueryData&) override {}
    void test_run_start() override {}
    void test_run_end(const doctest::TestRunStats&) override {}
    void test_case_start(const doctest::TestCaseData&) override { ++g_started; }
    void test_case_reenter(const doctest::TestCaseData&) override {}
    void test_case_end(const doctest::CurrentTestCaseStats&) override {}
    void test_case_exception(const doctest::TestCaseException&) override {}
    void subcase_start(const doctest::SubcaseSignature&) override {}
    void subcase_end() override {}
    void log_assert(const doctest::AssertData&) override {}
    void log_message(const doctest::MessageData&) override {}
    void test_case_skipped(const doctest::TestCaseData&) override {}
};

} // namespace

DOCTEST_REGISTER_LISTENER("count_test_cases", 0, count_test_cases);

int main(int argc, char** argv) {
    bool filtered = false, listing = false;
    for (int i = 1; i < argc; ++i) {
        const std::string_view a(argv[i]);
        if (a.starts_with("--test-case=") || a.starts_with("-tc=")) filtered = true;
        if (a.starts_with("--list") || a.starts_with("-ltc") || a.starts_with("-lts") || a.starts_with("-lr"))
            listing = true;
    }
    doctest::Context context(argc, argv);
    const int rc = context.run();
    if (context.shouldExit()) return rc;
    if (rc == 0 && filtered && !listing && g_started == 0) {
        std::fprintf(stderr, "test main: the --test-case filter matched no test case (does its name contain ';'?)\n");
        return 1;
    }
    return rc;
}
