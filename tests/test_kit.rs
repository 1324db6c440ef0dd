//! The given/when/then kit: what it checks on every run, and what its
//! failures say.

use std::sync::atomic::{AtomicU32, Ordering};

use evently::prelude::*;
use evently::testing::{given, Scenario};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
enum TallyEvent {
    Added {
        n: u32,
    },
    Noted {
        text: String,
        #[serde(skip)]
        lost_in_storage: u32,
    },
}

#[derive(Debug, Clone, Command)]
enum TallyCommand {
    Add { id: String, n: u32 },
    AddTwice { id: String, n: u32 },
    Note { id: String, text: String },
}

#[derive(Debug, PartialEq, thiserror::Error)]
#[error("too big: {0}")]
struct TooBig(u32);

#[derive(Debug, Default, PartialEq, Aggregate)]
#[aggregate(event = TallyEvent, command = TallyCommand, error = TooBig)]
struct Tally {
    total: u32,
}

impl Tally {
    fn decide(&self, command: TallyCommand) -> Result<Vec<TallyEvent>, TooBig> {
        match command {
            TallyCommand::Add { n, .. } if n > 100 => Err(TooBig(n)),
            TallyCommand::Add { n, .. } => Ok(vec![TallyEvent::Added { n }]),
            TallyCommand::AddTwice { n, .. } => {
                Ok(vec![TallyEvent::Added { n }, TallyEvent::Added { n }])
            }
            TallyCommand::Note { text, .. } => Ok(vec![TallyEvent::Noted {
                text,
                lost_in_storage: 7,
            }]),
        }
    }

    fn apply(&mut self, event: &TallyEvent) {
        if let TallyEvent::Added { n } = event {
            self.total += n;
        }
    }
}

fn add(n: u32) -> TallyCommand {
    TallyCommand::Add { id: "t".into(), n }
}

#[test]
fn matching_events_pass_and_return_the_new_state() {
    let state = given::<Tally>([TallyEvent::Added { n: 1 }])
        .when(add(2))
        .then_expect_events([TallyEvent::Added { n: 2 }]);
    assert_eq!(state.total, 3);
}

#[test]
#[should_panic(
    expected = "the command produced other events than expected:\n  ~ #0 expected Added { n: 3 }\n         actual Added { n: 2 }\n"
)]
fn a_different_event_is_shown_as_a_diff() {
    given::<Tally>([])
        .when(add(2))
        .then_expect_events([TallyEvent::Added { n: 3 }]);
}

#[test]
#[should_panic(
    expected = "  = #0 Added { n: 2 }\n  + #1 Added { n: 2 } (produced, not expected)\n"
)]
fn an_unexpected_extra_event_is_marked() {
    given::<Tally>([])
        .when(TallyCommand::AddTwice {
            id: "t".into(),
            n: 2,
        })
        .then_expect_events([TallyEvent::Added { n: 2 }]);
}

#[test]
#[should_panic(expected = "  - #1 Added { n: 9 } (expected, not produced)")]
fn a_missing_event_is_marked() {
    given::<Tally>([])
        .when(add(2))
        .then_expect_events([TallyEvent::Added { n: 2 }, TallyEvent::Added { n: 9 }]);
}

#[test]
fn an_expected_error_passes() {
    given::<Tally>([])
        .when(add(101))
        .then_expect_error(TooBig(101));
    given::<Tally>([])
        .when(add(500))
        .then_expect_error_matching(|e| e.0 == 500);
}

#[test]
#[should_panic(
    expected = "the command was rejected with another error:\n  expected: TooBig(102)\n  actual:   TooBig(101)"
)]
fn another_error_is_shown() {
    given::<Tally>([])
        .when(add(101))
        .then_expect_error(TooBig(102));
}

#[test]
#[should_panic(expected = "expected events, but the command was rejected: TooBig(101)")]
fn a_rejection_when_events_were_expected_is_shown() {
    given::<Tally>([])
        .when(add(101))
        .then_expect_events([TallyEvent::Added { n: 101 }]);
}

#[test]
#[should_panic(expected = "expected the error TooBig(1), but the command produced events")]
fn events_when_an_error_was_expected_are_shown() {
    given::<Tally>([]).when(add(1)).then_expect_error(TooBig(1));
}

#[test]
#[should_panic(expected = "event `Noted` changes in an encode/decode round trip")]
fn an_event_that_does_not_survive_storage_is_caught() {
    given::<Tally>([])
        .when(TallyCommand::Note {
            id: "t".into(),
            text: "hi".into(),
        })
        .then_expect_events([TallyEvent::Noted {
            text: "hi".into(),
            lost_in_storage: 7,
        }]);
}

// An aggregate that changes state in `handle`, behind `apply`'s back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
enum PingEvent {
    Pinged,
}

#[derive(Debug, Clone, Command)]
struct Ping {
    id: String,
}

#[derive(Debug, PartialEq, thiserror::Error)]
#[error("never")]
struct Never;

#[derive(Debug, Default, Aggregate)]
#[aggregate(event = PingEvent, command = Ping, error = Never)]
struct Sneaky {
    pings: AtomicU32,
}

impl PartialEq for Sneaky {
    fn eq(&self, other: &Self) -> bool {
        self.pings.load(Ordering::SeqCst) == other.pings.load(Ordering::SeqCst)
    }
}

impl Sneaky {
    fn decide(&self, _: Ping) -> Result<Vec<PingEvent>, Never> {
        self.pings.fetch_add(1, Ordering::SeqCst);
        Ok(vec![PingEvent::Pinged])
    }

    fn apply(&mut self, _: &PingEvent) {
        *self.pings.get_mut() += 1;
    }
}

#[test]
#[should_panic(
    expected = "replaying the events from scratch gives another state than the live aggregate"
)]
fn state_changed_outside_apply_is_caught() {
    given::<Sneaky>([PingEvent::Pinged])
        .when(Ping { id: "p".into() })
        .then_expect_events([PingEvent::Pinged]);
}

// An aggregate that consults a service, tested with a fake one.
trait Limits: Send + Sync {
    fn max(&self) -> impl std::future::Future<Output = u32> + Send;
}

struct FixedLimit(u32);

impl Limits for FixedLimit {
    async fn max(&self) -> u32 {
        self.0
    }
}

#[derive(Debug, Default, PartialEq, Aggregate)]
#[aggregate(event = TallyEvent, command = TallyCommand, error = TooBig, services = FixedLimit, shares_event)]
struct LimitedTally {
    total: u32,
}

impl LimitedTally {
    async fn decide(
        &self,
        command: TallyCommand,
        limits: &FixedLimit,
    ) -> Result<Vec<TallyEvent>, TooBig> {
        match command {
            TallyCommand::Add { n, .. } if self.total + n > limits.max().await => Err(TooBig(n)),
            TallyCommand::Add { n, .. } => Ok(vec![TallyEvent::Added { n }]),
            _ => Ok(vec![]),
        }
    }

    fn apply(&mut self, event: &TallyEvent) {
        if let TallyEvent::Added { n } = event {
            self.total += n;
        }
    }
}

#[test]
fn a_decision_consults_a_fake_service_without_a_store() {
    Scenario::<LimitedTally>::with_services(FixedLimit(10))
        .given([TallyEvent::Added { n: 8 }])
        .when(add(2))
        .then_expect_events([TallyEvent::Added { n: 2 }]);
    Scenario::<LimitedTally>::with_services(FixedLimit(10))
        .given([TallyEvent::Added { n: 8 }])
        .when(add(3))
        .then_expect_error(TooBig(3));
}

// An aggregate that calls another system: its services await (a network
// call, a tokio timer). This is the README's "Aggregates that call other
// systems" example.
mod calls_other_systems {
    use std::sync::Arc;
    use std::time::Duration;

    use evently::prelude::*;
    use evently::testing::Scenario;
    use futures::future::BoxFuture;
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
    enum PaymentEvent {
        Paid { amount: u64 },
    }

    #[derive(Debug, Clone, Command)]
    enum PaymentCommand {
        Pay { id: String, amount: u64 },
    }

    #[derive(Debug, PartialEq, thiserror::Error)]
    enum PaymentError {
        #[error("refused by the fraud check: {0}")]
        Fraud(String),
    }

    /// The other system, behind a trait object: the real client in
    /// production, a mock in tests.
    trait FraudCheck: Send + Sync {
        fn check(&self, account: &str, amount: u64) -> BoxFuture<'_, Result<(), String>>;
    }

    #[derive(Debug, Default, PartialEq, Aggregate)]
    #[aggregate(event = PaymentEvent, command = PaymentCommand, error = PaymentError, services = Arc<dyn FraudCheck>)]
    struct Payment {
        paid: u64,
    }

    impl Payment {
        async fn decide(
            &self,
            command: PaymentCommand,
            fraud: &Arc<dyn FraudCheck>,
        ) -> Result<Vec<PaymentEvent>, PaymentError> {
            let PaymentCommand::Pay { id, amount } = command;
            fraud
                .check(&id, amount)
                .await
                .map_err(PaymentError::Fraud)?;
            Ok(vec![PaymentEvent::Paid { amount }])
        }

        fn apply(&mut self, event: &PaymentEvent) {
            let PaymentEvent::Paid { amount } = event;
            self.paid += amount;
        }
    }

    /// A mock that answers after a tokio timer, as a network call would.
    struct MockFraudCheck {
        limit: u64,
    }

    impl FraudCheck for MockFraudCheck {
        fn check(&self, _account: &str, amount: u64) -> BoxFuture<'_, Result<(), String>> {
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(1)).await;
                if amount > self.limit {
                    Err(format!("{amount} is over the limit"))
                } else {
                    Ok(())
                }
            })
        }
    }

    fn pay(amount: u64) -> PaymentCommand {
        PaymentCommand::Pay {
            id: "p1".into(),
            amount,
        }
    }

    #[tokio::test]
    async fn a_decision_awaiting_a_mock_service_is_tested_with_when_async() {
        let fraud: Arc<dyn FraudCheck> = Arc::new(MockFraudCheck { limit: 100 });
        let state = Scenario::<Payment>::with_services(Arc::clone(&fraud))
            .given([PaymentEvent::Paid { amount: 10 }])
            .when_async(pay(40))
            .await
            .then_expect_events([PaymentEvent::Paid { amount: 40 }]);
        assert_eq!(state.paid, 50);

        // The service's refusal is the command's rejection.
        Scenario::<Payment>::with_services(fraud)
            .when_async(pay(500))
            .await
            .then_expect_error(PaymentError::Fraud("500 is over the limit".into()));
    }

    // On a multi-threaded runtime too.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn when_async_works_on_a_multi_threaded_runtime() {
        Scenario::<Payment>::with_services(Arc::new(MockFraudCheck { limit: 0 }))
            .when_async(pay(1))
            .await
            .then_expect_error_matching(|e| matches!(e, PaymentError::Fraud(_)));
    }

    // The blocking `when` inside `#[tokio::test]` used to hang for ever on
    // such a decision (its thread blocked the runtime that drives the
    // timer); it now fails at once, naming the way out.
    #[tokio::test]
    #[should_panic(expected = "use `.when_async(command).await` instead of `.when(command)`")]
    async fn when_in_a_tokio_test_on_a_waiting_decision_fails_instead_of_hanging() {
        let _ = Scenario::<Payment>::with_services(Arc::new(MockFraudCheck { limit: 100 }))
            .when(pay(1));
    }

    // A decision that does not wait still runs with the blocking `when`,
    // inside a runtime or not.
    #[tokio::test]
    async fn when_in_a_tokio_test_on_a_ready_decision_still_works() {
        super::given::<super::Tally>([])
            .when(super::add(2))
            .then_expect_events([super::TallyEvent::Added { n: 2 }]);
    }
}
