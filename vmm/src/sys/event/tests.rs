//! The same behaviour tests for both implementations: epoll/eventfd on Linux and the portable
//! one that macOS and Windows use.

use std::sync::Arc;
use std::time::{Duration, Instant};

macro_rules! event_tests {
    ($name:ident, $module:path) => {
        mod $name {
            use super::*;
            use $module::{EventNotifier, Poller};

            #[test]
            fn test_notify_then_wait_reports_key() {
                let (n, p) = (EventNotifier::new().unwrap(), Poller::new().unwrap());
                p.add(&n, 7).unwrap();
                n.notify().unwrap();
                let mut ready = Vec::new();
                p.wait(Some(Duration::from_secs(5)), &mut ready).unwrap();
                assert_eq!(ready, vec![7]);
            }

            #[test]
            fn test_drain_counts_and_resets() {
                let n = EventNotifier::new().unwrap();
                assert_eq!(n.drain().unwrap(), 0, "never blocks");
                n.notify().unwrap();
                n.notify().unwrap();
                assert_eq!(n.drain().unwrap(), 2);
                assert_eq!(n.drain().unwrap(), 0);
            }

            #[test]
            fn test_level_triggered_until_drained() {
                let (n, p) = (EventNotifier::new().unwrap(), Poller::new().unwrap());
                n.notify().unwrap();
                p.add(&n, 1).unwrap();
                let mut ready = Vec::new();
                for _ in 0..2 {
                    p.wait(Some(Duration::from_secs(5)), &mut ready).unwrap();
                    assert_eq!(ready, vec![1]);
                }
                n.drain().unwrap();
                p.wait(Some(Duration::from_millis(20)), &mut ready).unwrap();
                assert!(ready.is_empty());
            }

            #[test]
            fn test_timeout_returns_empty_after_timeout() {
                let (n, p) = (EventNotifier::new().unwrap(), Poller::new().unwrap());
                p.add(&n, 1).unwrap();
                let start = Instant::now();
                let mut ready = vec![99];
                p.wait(Some(Duration::from_millis(50)), &mut ready).unwrap();
                assert!(ready.is_empty());
                assert!(start.elapsed() >= Duration::from_millis(45));
            }

            #[test]
            fn test_wakes_waiter_in_another_thread() {
                let n = Arc::new(EventNotifier::new().unwrap());
                let p = Poller::new().unwrap();
                p.add(&n, 3).unwrap();
                let n2 = n.clone();
                let t = std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(30));
                    n2.notify().unwrap();
                });
                let mut ready = Vec::new();
                p.wait(None, &mut ready).unwrap();
                assert_eq!(ready, vec![3]);
                t.join().unwrap();
            }

            #[test]
            fn test_clone_shares_counter_and_remove_stops_reports() {
                let (a, p) = (EventNotifier::new().unwrap(), Poller::new().unwrap());
                let b = a.try_clone().unwrap();
                let other = EventNotifier::new().unwrap();
                p.add(&a, 1).unwrap();
                p.add(&other, 2).unwrap();
                b.notify().unwrap();
                other.notify().unwrap();
                let mut ready = Vec::new();
                p.wait(Some(Duration::from_secs(5)), &mut ready).unwrap();
                ready.sort();
                assert_eq!(ready, vec![1, 2]);
                assert_eq!(a.drain().unwrap(), 1);
                p.remove(&other).unwrap();
                p.wait(Some(Duration::from_millis(20)), &mut ready).unwrap();
                assert!(
                    ready.is_empty(),
                    "removed notifier still reported: {ready:?}"
                );
            }

            #[test]
            fn test_one_notifier_in_two_pollers() {
                let n = EventNotifier::new().unwrap();
                let (p, q) = (Poller::new().unwrap(), Poller::new().unwrap());
                p.add(&n, 1).unwrap();
                q.add(&n, 2).unwrap();
                n.notify().unwrap();
                let mut ready = Vec::new();
                p.wait(Some(Duration::from_secs(5)), &mut ready).unwrap();
                assert_eq!(ready, vec![1]);
                q.wait(Some(Duration::from_secs(5)), &mut ready).unwrap();
                assert_eq!(ready, vec![2]);
            }
        }
    };
}

#[cfg(target_os = "linux")]
event_tests!(linux_epoll, super::super::linux);
event_tests!(portable, super::super::portable);
