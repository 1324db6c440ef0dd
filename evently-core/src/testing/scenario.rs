//! Given/when/then for one aggregate, with no store: apply the given
//! events, run one command, compare what it decided.

use std::fmt::Debug;

use crate::aggregate::Aggregate;
use crate::event::Event;

/// Starts a scenario from past events, for an aggregate without services
/// (or with default ones).
///
/// ```
/// # use evently_core::prelude::*;
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
/// # enum CounterEvent { Incremented { by: u32 } }
/// # #[derive(Debug, Clone, Command)]
/// # enum CounterCommand { Increment { id: String, by: u32 } }
/// # #[derive(Debug, PartialEq, thiserror::Error)]
/// # #[error("overflow")]
/// # struct Overflow;
/// # #[derive(Debug, Default, PartialEq, Aggregate)]
/// # #[aggregate(event = CounterEvent, command = CounterCommand, error = Overflow)]
/// # struct Counter { value: u32 }
/// # impl Counter {
/// #     fn decide(&self, c: CounterCommand) -> Result<Vec<CounterEvent>, Overflow> {
/// #         let CounterCommand::Increment { by, .. } = c;
/// #         self.value.checked_add(by).ok_or(Overflow)?;
/// #         Ok(vec![CounterEvent::Incremented { by }])
/// #     }
/// #     fn apply(&mut self, e: &CounterEvent) { let CounterEvent::Incremented { by } = e; self.value += by; }
/// # }
/// use evently_core::testing::given;
///
/// given::<Counter>([CounterEvent::Incremented { by: 1 }])
///     .when(CounterCommand::Increment { id: "c".into(), by: 2 })
///     .then_expect_events([CounterEvent::Incremented { by: 2 }]);
///
/// given::<Counter>([CounterEvent::Incremented { by: u32::MAX }])
///     .when(CounterCommand::Increment { id: "c".into(), by: 1 })
///     .then_expect_error(Overflow);
/// ```
pub fn given<A>(events: impl IntoIterator<Item = A::Event>) -> Scenario<A>
where
    A: Aggregate,
    A::Services: Default,
{
    Scenario::new().given(events)
}

/// A test of one command against an aggregate built from given events.
///
/// On every run it also checks that each event, given or produced, survives
/// an encode/decode round trip unchanged, and that replaying all events from
/// scratch gives the same state as the live aggregate (which catches state
/// changed outside `apply`, for example through interior mutability in
/// `handle`).
pub struct Scenario<A: Aggregate> {
    services: A::Services,
    history: Vec<A::Event>,
}

impl<A: Aggregate> Scenario<A>
where
    A::Services: Default,
{
    /// A scenario with no past events and default services.
    pub fn new() -> Self {
        Self::with_services(A::Services::default())
    }
}

impl<A: Aggregate> Default for Scenario<A>
where
    A::Services: Default,
{
    fn default() -> Self {
        Self::new()
    }
}

impl<A: Aggregate> Scenario<A> {
    /// A scenario whose aggregate consults `services` (a fake, usually).
    pub fn with_services(services: A::Services) -> Self {
        Scenario {
            services,
            history: Vec::new(),
        }
    }

    /// Adds past events.
    pub fn given(mut self, events: impl IntoIterator<Item = A::Event>) -> Self {
        self.history.extend(events);
        self
    }
}

impl<A> Scenario<A>
where
    A: Aggregate + PartialEq + Debug,
    A::Event: PartialEq + Debug,
    A::Error: Debug,
{
    /// Runs `command` against the aggregate built from the given events.
    ///
    /// For an aggregate whose decision completes without waiting (no
    /// services, or services that answer at once). A decision that awaits a
    /// timer or a socket inside a tokio runtime (a `#[tokio::test]`) cannot
    /// complete while this blocks the runtime's thread: `when` then panics,
    /// saying so, rather than hang — use [`Scenario::when_async`] there.
    #[track_caller]
    pub fn when(self, command: A::Command) -> ThenExpect<A> {
        let live = self.fold_history();
        let result = if tokio::runtime::Handle::try_current().is_ok() {
            let decision = live.decide(command, &self.services);
            match futures::FutureExt::now_or_never(decision) {
                Some(result) => result,
                None => panic!(
                    "the aggregate's decision awaits something (a service's timer or socket) \
                     inside a tokio runtime, where blocking on it would deadlock: use \
                     `.when_async(command).await` instead of `.when(command)`"
                ),
            }
        } else {
            futures_executor::block_on(live.decide(command, &self.services))
        };
        self.then(live, result)
    }

    /// Runs `command` against the aggregate built from the given events,
    /// awaiting its decision: for aggregates whose services await (a mock
    /// HTTP client, a tokio timer), in a `#[tokio::test]`.
    ///
    /// ```
    /// # use evently_core::prelude::*;
    /// # use serde::{Deserialize, Serialize};
    /// # #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
    /// # enum PaymentEvent { Paid { cents: u64 } }
    /// # #[derive(Debug, Clone, Command)]
    /// # enum PaymentCommand { Pay { id: String, cents: u64 } }
    /// # #[derive(Debug, PartialEq, thiserror::Error)]
    /// # #[error("declined")]
    /// # struct Declined;
    /// struct SlowBank;
    ///
    /// impl SlowBank {
    ///     async fn approves(&self, cents: u64) -> bool {
    ///         tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    ///         cents <= 100
    ///     }
    /// }
    ///
    /// #[derive(Debug, Default, PartialEq, Aggregate)]
    /// #[aggregate(event = PaymentEvent, command = PaymentCommand, error = Declined, services = SlowBank)]
    /// struct Payment;
    ///
    /// impl Payment {
    ///     async fn decide(&self, c: PaymentCommand, bank: &SlowBank) -> Result<Vec<PaymentEvent>, Declined> {
    ///         let PaymentCommand::Pay { cents, .. } = c;
    ///         if !bank.approves(cents).await { return Err(Declined); }
    ///         Ok(vec![PaymentEvent::Paid { cents }])
    ///     }
    ///     fn apply(&mut self, _: &PaymentEvent) {}
    /// }
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// evently_core::testing::Scenario::<Payment>::with_services(SlowBank)
    ///     .when_async(PaymentCommand::Pay { id: "p".into(), cents: 500 })
    ///     .await
    ///     .then_expect_error(Declined);
    /// # });
    /// ```
    pub async fn when_async(self, command: A::Command) -> ThenExpect<A> {
        let live = self.fold_history();
        let result = live.decide(command, &self.services).await;
        self.then(live, result)
    }

    /// The aggregate built from the given events, each checked to survive
    /// an encode/decode round trip.
    #[track_caller]
    fn fold_history(&self) -> A {
        let mut live = A::default();
        for event in &self.history {
            assert_round_trip(event);
            live.apply(event);
        }
        live
    }

    /// Checks the decision's events (round trip, replay) and applies them.
    #[track_caller]
    fn then(&self, mut live: A, result: Result<Vec<A::Event>, A::Error>) -> ThenExpect<A> {
        if let Ok(events) = &result {
            for event in events {
                assert_round_trip(event);
                live.apply(event);
            }
            let mut replayed = A::default();
            for event in self.history.iter().chain(events) {
                replayed.apply(&round_trip(event));
            }
            assert!(
                replayed == live,
                "replaying the events from scratch gives another state than the live aggregate \
                 (is state changed outside `apply`?)\n  live:     {live:?}\n  replayed: {replayed:?}"
            );
        }
        ThenExpect {
            result,
            state: live,
        }
    }
}

/// The outcome of [`Scenario::when`] or [`Scenario::when_async`], to assert on.
#[must_use = "a scenario asserts nothing until a `then_…` method is called"]
pub struct ThenExpect<A: Aggregate> {
    result: Result<Vec<A::Event>, A::Error>,
    state: A,
}

impl<A> ThenExpect<A>
where
    A: Aggregate + Debug,
    A::Event: PartialEq + Debug,
    A::Error: Debug,
{
    /// Asserts that the command produced exactly these events, in order.
    /// On failure it prints a line per event: `=` same, `-` expected only,
    /// `+` produced only, `~` differs.
    #[track_caller]
    pub fn then_expect_events(self, expected: impl IntoIterator<Item = A::Event>) -> A {
        let expected: Vec<A::Event> = expected.into_iter().collect();
        match self.result {
            Ok(actual) if actual == expected => self.state,
            Ok(actual) => panic!(
                "the command produced other events than expected:\n{}",
                diff(&expected, &actual)
            ),
            Err(error) => panic!(
                "expected events, but the command was rejected: {error:?}\n  expected: {expected:#?}"
            ),
        }
    }

    /// Asserts that the command produced no event.
    #[track_caller]
    pub fn then_expect_no_events(self) -> A {
        self.then_expect_events([])
    }

    /// Asserts that the command was rejected with this error.
    #[track_caller]
    pub fn then_expect_error(self, expected: A::Error)
    where
        A::Error: PartialEq,
    {
        match self.result {
            Err(actual) if actual == expected => {}
            Err(actual) => panic!(
                "the command was rejected with another error:\n  expected: {expected:?}\n  actual:   {actual:?}"
            ),
            Ok(events) => panic!(
                "expected the error {expected:?}, but the command produced events:\n{events:#?}"
            ),
        }
    }

    /// Asserts that the command was rejected with an error `check` accepts.
    #[track_caller]
    pub fn then_expect_error_matching(self, check: impl FnOnce(&A::Error) -> bool) {
        match self.result {
            Err(actual) => assert!(
                check(&actual),
                "the command was rejected with an unexpected error: {actual:?}"
            ),
            Ok(events) => {
                panic!("expected an error, but the command produced events:\n{events:#?}")
            }
        }
    }

    /// The decision, to inspect by hand.
    pub fn result(&self) -> &Result<Vec<A::Event>, A::Error> {
        &self.result
    }
}

impl<P> ThenExpect<P>
where
    P: crate::process::ProcessManager + Debug,
    P::Event: PartialEq + Debug,
    P::Error: Debug,
    P::Output: PartialEq,
{
    /// For a process manager: asserts the commands its decision's events
    /// send ([`ProcessManager::commands`](crate::process::ProcessManager::commands)),
    /// in order; chain the other assertions after it.
    #[track_caller]
    pub fn then_expect_commands(self, expected: impl IntoIterator<Item = P::Output>) -> Self {
        let expected: Vec<P::Output> = expected.into_iter().collect();
        let sent: Vec<P::Output> = self.decided().iter().flat_map(P::commands).collect();
        assert!(
            sent == expected,
            "the decision sends other commands than expected:\n  expected: {expected:#?}\n  sent:     {sent:#?}"
        );
        self
    }

    /// For a process manager: asserts the deadlines its decision's events
    /// set and cancel, in order.
    #[track_caller]
    pub fn then_expect_deadlines(
        self,
        expected: impl IntoIterator<Item = crate::process::DeadlineChange>,
    ) -> Self {
        let expected: Vec<_> = expected.into_iter().collect();
        let changed: Vec<_> = self.decided().iter().flat_map(P::deadlines).collect();
        assert!(
            changed == expected,
            "the decision changes other deadlines than expected:\n  expected: {expected:#?}\n  changed:  {changed:#?}"
        );
        self
    }

    #[track_caller]
    fn decided(&self) -> &[P::Event] {
        match &self.result {
            Ok(events) => events,
            Err(error) => panic!("expected a decision, but the input was refused: {error:?}"),
        }
    }
}

/// An event as a store would hand it over, for a process manager's
/// [`ProcessInput::Event`](crate::process::ProcessInput::Event) in a
/// scenario: the `version`th event of `stream`, correlated to nothing.
pub fn recorded<E: Event>(stream: &str, version: u64, event: E) -> crate::event::RecordedEvent<E> {
    crate::event::RecordedEvent {
        event_id: uuid::Uuid::now_v7(),
        stream_id: crate::version::StreamId::from(stream),
        stream_version: version,
        global_position: version,
        event_type: event.event_type().into(),
        schema_version: event.schema_version(),
        data: event,
        metadata: crate::metadata::Metadata::new(),
        recorded_at: chrono::Utc::now(),
    }
}

fn round_trip<E: Event>(event: &E) -> E {
    let payload = event
        .encode()
        .unwrap_or_else(|e| panic!("event `{}` does not encode: {e}", event.event_type()));
    E::decode(event.event_type(), event.schema_version(), &payload).unwrap_or_else(|e| {
        panic!(
            "event `{}` does not decode from its own payload {payload}: {e}",
            event.event_type()
        )
    })
}

#[track_caller]
fn assert_round_trip<E: Event + PartialEq + Debug>(event: &E) {
    let back = round_trip(event);
    assert!(
        back == *event,
        "event `{}` changes in an encode/decode round trip (a field skipped or renamed by serde?)\n  before: {event:?}\n  after:  {back:?}",
        event.event_type()
    );
}

fn diff<E: PartialEq + Debug>(expected: &[E], actual: &[E]) -> String {
    let mut out = String::new();
    for i in 0..expected.len().max(actual.len()) {
        let line = match (expected.get(i), actual.get(i)) {
            (Some(e), Some(a)) if e == a => format!("  = #{i} {e:?}\n"),
            (Some(e), Some(a)) => format!("  ~ #{i} expected {e:?}\n         actual {a:?}\n"),
            (Some(e), None) => format!("  - #{i} {e:?} (expected, not produced)\n"),
            (None, Some(a)) => format!("  + #{i} {a:?} (produced, not expected)\n"),
            (None, None) => String::new(),
        };
        out.push_str(&line);
    }
    if out.is_empty() {
        out.push_str("  (no events on either side)\n");
    }
    out
}
