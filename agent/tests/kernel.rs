//! Tier 2 and 3: the real eBPF programs in the real kernel. Tier 3 tests attach them to a
//! cgroup the test creates and judge real sockets of a probe process in the test bed's
//! client namespace (see `testbed/`); the differential test runs the packet program with
//! `BPF_PROG_TEST_RUN`. Needs root; fails (never skips) without it.
//!
//! Run: `cargo test -p egressd --test kernel`. The binary doubles as the probe client
//! (argv[1] == `__egressd_probe`), so the probe runs the same code in every test.
mod kernel {
    pub mod audit;
    pub mod differential;
    pub mod enforce;
    pub mod fleet;
    pub mod forced;
    pub mod harness;
    pub mod lastgood;
    pub mod lsm;
    pub mod nexthop;
    pub mod paths;
    pub mod reload;
    pub mod security;
    pub mod summary;
    pub mod table;
    pub mod tc;
}

use kernel::{
    audit, differential, enforce, fleet, forced, harness, lastgood, lsm, nexthop, paths, reload,
    security, summary, table, tc,
};
use libtest_mimic::{Arguments, Trial};

fn main() {
    // The probe client may run as a link whose name is not UTF-8 (argv[0]).
    let argv: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    if argv.get(1).map(String::as_str) == Some(harness::PROBE_ARG) {
        std::process::exit(egressd_testbed::client::main(&argv[2..]));
    }
    if argv.get(1).map(String::as_str) == Some(security::HOLD_ARG) {
        std::process::exit(security::hold_main(&argv[2..]));
    }
    if argv.get(1).map(String::as_str) == Some(summary::FLOOD_ARG) {
        std::process::exit(summary::flood_main(&argv[2..]));
    }
    if argv.get(1).map(String::as_str) == Some(summary::CGROUPS_ARG) {
        std::process::exit(summary::cgroups_main(&argv[2..]));
    }
    if argv.get(1).map(String::as_str) == Some(summary::RACE_ARG) {
        std::process::exit(summary::race_main(&argv[2..]));
    }
    let args = Arguments::from_args();
    // SAFETY: before any test thread or child starts.
    let dirs = unsafe { egressd_testbed::DaemonDirs::for_children("egressd-test") };
    let tests = vec![
        Trial::test("lsm_packet_sockets_denied", lsm::packet_sockets_denied),
        Trial::test(
            "lsm_packet_sockets_audit_and_allow",
            lsm::packet_sockets_audit_and_allow,
        ),
        Trial::test(
            "lsm_packet_socket_executables",
            lsm::packet_socket_executables,
        ),
        Trial::test("lsm_pinned_links", lsm::pinned_lsm_links),
        Trial::test("lsm_programs_verify", lsm::lsm_programs_verify),
        Trial::test("tc_packet_frames_denied", tc::tc_packet_frames_denied),
        Trial::test(
            "tc_packet_frames_audit_and_allow",
            tc::tc_packet_frames_audit_and_allow,
        ),
        Trial::test("tc_pinned_and_detach", tc::tc_pinned_and_detach),
        Trial::test(
            "cgroup_made_anew_is_enforced",
            tc::cgroup_made_anew_is_enforced,
        ),
        Trial::test("raw_next_hop_denied", nexthop::raw_next_hop_denied),
        Trial::test("raw_next_hop_audit", nexthop::raw_next_hop_audit),
        Trial::test(
            "raw_local_header_cached_then_sent_out",
            nexthop::raw_local_header_cached_then_sent_out,
        ),
        Trial::test("forced_next_hop_denied", forced::forced_next_hop_denied),
        Trial::test("forced_next_hop_cached", forced::forced_next_hop_cached),
        Trial::test("forced_next_hop_audit", forced::forced_next_hop_audit),
        Trial::test("forced_next_hop_cost", forced::forced_next_hop_cost),
        Trial::test("enforce_ipv4_tcp_and_connected_udp", enforce::enforce_ipv4),
        Trial::test("enforce_ipv6_tcp_and_connected_udp", enforce::enforce_ipv6),
        Trial::test(
            "enforce_ipv4_with_table_lookup",
            enforce::enforce_ipv4_table,
        ),
        Trial::test("ipv4_mapped_ipv6_is_judged_as_ipv4", enforce::mapped),
        Trial::test("unconnected_udp_sendto_is_denied", enforce::unconnected_udp),
        Trial::test(
            "name_lookup_udp_connect_is_not_an_attempt",
            enforce::lookup_is_not_an_attempt,
        ),
        Trial::test(
            "destination_in_no_region_is_denied",
            enforce::unknown_region,
        ),
        Trial::test("loopback_is_always_allowed", enforce::loopback),
        Trial::test("audit_lets_through_and_reports", enforce::audit),
        Trial::test("counters_equal_attempts", enforce::counters),
        Trial::test("event_json_fields", enforce::event_fields),
        Trial::test(
            "unprivileged_run_says_what_is_missing",
            enforce::unprivileged,
        ),
        Trial::test("path_tcp_fast_open", paths::tcp_fast_open),
        Trial::test("path_io_uring_connect_and_sendmsg", paths::io_uring),
        Trial::test("path_udp_sendmmsg", paths::sendmmsg),
        Trial::test("path_raw_icmp_and_icmpv6", paths::raw_icmp),
        Trial::test("path_raw_ip_protocol", paths::raw_ip),
        Trial::test(
            "path_raw_socket_second_destination",
            paths::raw_second_destination,
        ),
        Trial::test("path_nat64_judged_by_embedded_ipv4", paths::nat64),
        Trial::ignorable_test("path_sctp_association_judged_by_packet_hook", paths::sctp),
        Trial::test(
            "path_established_flow_cut_on_policy_change",
            paths::established_cut,
        ),
        Trial::test(
            "path_established_flow_kept_when_configured",
            paths::established_keep,
        ),
        Trial::test(
            "path_raw_tcp_socket_not_kept_as_a_connection",
            paths::raw_tcp_socket_not_kept,
        ),
        Trial::test("path_forked_child_in_own_netns", paths::forked_child),
        Trial::test("path_audit_mode_reports_every_path", paths::audit_paths),
        Trial::test("flow_bytes_and_packets_per_region", paths::flow_bytes),
        Trial::test(
            "path_tcp_handshake_flows_counted_per_region",
            paths::handshake_flows,
        ),
        Trial::test(
            "reload_invalid_policy_changes_nothing",
            paths::invalid_reload,
        ),
        Trial::test(
            "differential_kernel_vs_reference_model",
            differential::differential,
        ),
        Trial::test(
            "table_outgrown_on_reload_falls_back_to_trie",
            table::capacity_fallback,
        ),
        Trial::test(
            "table6_outgrown_on_reload_falls_back_to_trie",
            table::capacity_fallback6,
        ),
        Trial::test(
            "table_small_policy_small_maps",
            table::small_policy_small_maps,
        ),
        Trial::test("map_lookups_resolved", table::map_lookups_resolved),
        Trial::test("rules_port_and_region_end_to_end", reload::rules_end_to_end),
        Trial::test(
            "reload_refuses_output_that_would_not_start",
            reload::reload_refuses_output_that_would_not_start,
        ),
        Trial::test(
            "reload_reordered_regions_keep_counter_labels",
            reload::stable_ids_across_reorder_and_restart,
        ),
        Trial::test("flood_100k_denials_suppressed_and_counted", paths::flood),
        Trial::test(
            "flood_distinct_destinations_all_accounted",
            summary::flood_invariant_unsuppressed,
        ),
        Trial::test(
            "flood_distinct_destinations_all_accounted_suppressed",
            summary::flood_invariant_suppressed,
        ),
        Trial::test(
            "flood_packet_hook_budgeted",
            summary::flood_packet_hook_budgeted,
        ),
        Trial::test(
            "flood_slow_sink_aggregated_not_dropped",
            summary::flood_slow_sink_aggregated_not_dropped,
        ),
        Trial::test(
            "flood_summary_table_full_all_accounted",
            summary::summary_table_full,
        ),
        Trial::test(
            "summary_table_refilled_each_second",
            summary::summary_table_refilled_each_second,
        ),
        Trial::test(
            "security_scrape_loop_keeps_summary_budget",
            summary::budget_kept_under_scrape_loop,
        ),
        Trial::test(
            "suppression_across_hooks_counted_once",
            summary::suppression_across_hooks_counted_once,
        ),
        Trial::test(
            "suppression_race_across_cpus_counted_once",
            summary::suppression_race_across_cpus,
        ),
        Trial::test(
            "flood_through_start_all_accounted",
            summary::flood_through_start_all_accounted,
        ),
        Trial::test(
            "fleet_overflow_between_pinned_runs_reported",
            summary::overflow_between_pinned_runs_reported,
        ),
        Trial::test(
            "reload_100_times_under_load_zero_misjudged",
            reload::reload_under_load,
        ),
        Trial::test("fleet_pinned_restart_kill9_no_gap", fleet::pinned_restart),
        Trial::test(
            "audit_verify_clean_run_and_damage",
            audit::clean_run_and_damage,
        ),
        Trial::test(
            "audit_verify_kill9_adoption_and_tamper",
            audit::kill9_adoption_and_tamper,
        ),
        Trial::test("audit_verify_keyed_chain", audit::keyed_chain),
        Trial::test(audit::DAY_LIKE_TEST, audit::day_like_run),
        Trial::test(
            "fleet_pins_of_other_layout_refused",
            fleet::pinned_other_layout_refused,
        ),
        Trial::test(
            "fleet_pinned_unpaged_table_upgraded",
            fleet::pinned_old_table_dropped,
        ),
        Trial::test("fleet_tamper_detected_and_repaired", fleet::tamper_repaired),
        Trial::test(
            "fleet_pinned_leftovers_never_decide",
            fleet::pinned_leftovers_never_decide,
        ),
        Trial::test(
            "fleet_second_daemon_on_a_cgroup_refused",
            fleet::second_daemon_refused,
        ),
        Trial::test(
            "fleet_signals_during_start_do_not_kill",
            fleet::signals_during_start,
        ),
        Trial::test(
            "fleet_detached_links_repaired_without_pins",
            fleet::health_without_pins,
        ),
        Trial::test(
            "fleet_metrics_equal_counters",
            fleet::metrics_equal_counters,
        ),
        Trial::test(
            "fleet_watch_reloads_on_file_change",
            fleet::watch_reloads_on_change,
        ),
        Trial::test(
            "fleet_systemd_notify_ready_after_attach",
            fleet::systemd_notify,
        ),
        Trial::test(
            "lastgood_fallback_on_invalid_policy_at_start",
            lastgood::fallback_on_invalid_policy_at_start,
        ),
        Trial::test(
            "lastgood_kept_policy_is_the_last_installed",
            lastgood::kept_policy_is_the_last_installed,
        ),
        Trial::test(
            "lastgood_status_shows_the_fallback",
            lastgood::status_shows_the_fallback,
        ),
        Trial::test(
            "lastgood_no_kept_policy_refuses_to_start",
            lastgood::no_kept_policy_refuses_to_start,
        ),
        Trial::test(
            "security_sink_and_spool_links_of_a_user",
            security::sink_and_spool_links_of_a_user,
        ),
        Trial::test(
            "security_watch_refuses_a_writable_drop_in_dir",
            security::watch_refuses_a_writable_drop_in_dir,
        ),
        Trial::test(
            "security_pin_dir_made_by_a_user_is_refused",
            security::pin_dir_made_by_a_user_is_refused,
        ),
        Trial::test(
            "security_detach_follows_no_maps_link",
            security::detach_follows_no_maps_link,
        ),
        Trial::test("security_bpffs_mounted_0700", security::bpffs_mounted_0700),
        Trial::test(
            "security_metrics_connection_flood",
            security::metrics_connection_flood,
        ),
        Trial::test("security_metrics_port_taken", security::metrics_port_taken),
        Trial::test(
            "security_privileges_dropped_after_attach",
            security::privileges_dropped_after_attach,
        ),
        Trial::test(
            "security_attribution_follows_exec",
            security::attribution_follows_exec,
        ),
        Trial::test(
            "security_attribution_survives_names_that_are_not_utf8",
            security::attribution_survives_names_that_are_not_utf8,
        ),
        Trial::test(
            "security_container_id_not_from_a_delegated_cgroup",
            security::container_id_not_from_a_delegated_cgroup,
        ),
    ];
    let conclusion = libtest_mimic::run(&args, tests);
    dirs.remove();
    conclusion.exit();
}
