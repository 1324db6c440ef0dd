//! Commands by virtual address on the real broker: typed outcomes and
//! errors, instances that come and go, discovery.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use evently_core::prelude::*;
use evently_nats::{discover, CommandService, RemoteError, RemoteRepository};
use evently_postgres::PgEventStore;
use serde::{Deserialize, Serialize};
use support::*;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
enum AccountEvent {
    Opened { owner: String },
    Deposited { amount: u64 },
    Withdrew { amount: u64 },
}

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
enum AccountCommand {
    Open { id: String, owner: String },
    Deposit { id: String, amount: u64 },
    Withdraw { id: String, amount: u64 },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
enum AccountError {
    #[error("the account is already open")]
    AlreadyOpen,
    #[error("the account is not open")]
    NotOpen,
    #[error("insufficient funds: balance {balance}, requested {requested}")]
    InsufficientFunds { balance: u64, requested: u64 },
}

/// What the account consults when deciding: the first decision of a
/// deposit of this amount takes long (as a call to a slow system would),
/// longer than a client waits; deciding it again (a retry) is quick.
#[derive(Default)]
struct SlowAmount(
    Option<u64>,
    std::sync::Arc<std::sync::Mutex<std::collections::HashSet<(String, u64)>>>,
);

#[derive(Debug, Default, Aggregate)]
#[aggregate(name = "account", event = AccountEvent, command = AccountCommand, error = AccountError, services = SlowAmount)]
struct Account {
    open: bool,
    balance: u64,
}

impl Account {
    async fn decide(
        &self,
        command: AccountCommand,
        slow: &SlowAmount,
    ) -> Result<Vec<AccountEvent>, AccountError> {
        use AccountCommand::*;
        if let Deposit { id, amount } = &command {
            let first = slow.0 == Some(*amount)
                && slow.1.lock().unwrap().insert((id.clone(), self.balance));
            if first {
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
        }
        match command {
            Open { .. } if self.open => Err(AccountError::AlreadyOpen),
            Open { owner, .. } => Ok(vec![AccountEvent::Opened { owner }]),
            _ if !self.open => Err(AccountError::NotOpen),
            Deposit { amount, .. } => Ok(vec![AccountEvent::Deposited { amount }]),
            Withdraw { amount, .. } if amount > self.balance => {
                Err(AccountError::InsufficientFunds {
                    balance: self.balance,
                    requested: amount,
                })
            }
            Withdraw { amount, .. } => Ok(vec![AccountEvent::Withdrew { amount }]),
        }
    }

    fn apply(&mut self, event: &AccountEvent) {
        match event {
            AccountEvent::Opened { .. } => self.open = true,
            AccountEvent::Deposited { amount } => self.balance += amount,
            AccountEvent::Withdrew { amount } => self.balance -= amount,
        }
    }
}

async fn pg_store(schema: &str) -> PgEventStore {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    PgEventStore::builder()
        .schema(schema)
        .connect(&url)
        .await
        .unwrap_or_else(|e| panic!("cannot set up a PostgreSQL store at {url}: {e}"))
}

/// An instance: its own connection to NATS, its own store handle and
/// repository (and so its own cache), one PostgreSQL schema for all.
async fn instance(service: &str, schema: &str, slowed: &Slowed) -> CommandService {
    let client = shared_client().await;
    let mut svc = CommandService::start(&client, service, "1.0.0")
        .await
        .unwrap();
    let repository = Repository::<Account, _>::with_services(
        pg_store(schema).await,
        SlowAmount(Some(10), slowed.clone()),
    );
    svc.serve(repository, 16).await.unwrap();
    svc
}

/// The first decisions already slowed, shared by the instances.
type Slowed = std::sync::Arc<std::sync::Mutex<std::collections::HashSet<(String, u64)>>>;

fn schema() -> String {
    format!("es_test_{}", uuid::Uuid::now_v7().simple())
}

fn service_name() -> String {
    format!("bank_{}", uuid::Uuid::now_v7().simple())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_command_returns_what_a_local_one_would() {
    let (name, schema) = (service_name(), schema());
    let one = instance(&name, &schema, &Slowed::default()).await;
    let client = shared_client().await;
    let accounts = RemoteRepository::<Account>::new(client.clone(), &name);

    let opened = accounts
        .execute(AccountCommand::Open {
            id: "alice".into(),
            owner: "Alice".into(),
        })
        .await
        .unwrap();
    assert_eq!(opened.stream_id.as_str(), "account-alice");
    assert_eq!(opened.version, 1);
    assert_eq!(
        opened.events[0].data,
        AccountEvent::Opened {
            owner: "Alice".into()
        }
    );
    let context = CommandContext::new().with_actor("teller");
    let deposited = accounts
        .execute_with(
            AccountCommand::Deposit {
                id: "alice".into(),
                amount: 30,
            },
            context.clone(),
        )
        .await
        .unwrap();
    assert_eq!(
        (deposited.version, deposited.events[0].stream_version),
        (2, 2)
    );
    assert_eq!(
        deposited.events[0].metadata.actor.as_deref(),
        Some("teller")
    );
    assert_eq!(
        deposited.events[0].metadata.command_id,
        Some(context.command_id)
    );
    // The same command id again: the first outcome, nothing appended.
    let again = accounts
        .execute_with(
            AccountCommand::Deposit {
                id: "alice".into(),
                amount: 30,
            },
            context,
        )
        .await
        .unwrap();
    assert_eq!(again.events[0].event_id, deposited.events[0].event_id);

    // The aggregate's own error, as a value.
    match accounts
        .execute(AccountCommand::Withdraw {
            id: "alice".into(),
            amount: 100,
        })
        .await
    {
        Err(RemoteError::Rejected(AccountError::InsufficientFunds { balance, requested })) => {
            assert_eq!((balance, requested), (30, 100));
        }
        other => panic!("expected the aggregate's rejection, got {other:?}"),
    }
    let refused = accounts
        .execute(AccountCommand::Deposit {
            id: "nobody".into(),
            amount: 1,
        })
        .await
        .unwrap_err();
    assert!(matches!(
        refused,
        RemoteError::Rejected(AccountError::NotOpen)
    ));
    assert_eq!(refused.status(), 422);

    // A request that does not decode: a typed 400, not a panic.
    let reply = client
        .request(format!("{name}.account"), "{\"command\": 42}".into())
        .await
        .unwrap();
    let headers = reply.headers.unwrap();
    assert_eq!(
        headers.get("Nats-Service-Error-Code").unwrap().as_str(),
        "400"
    );
    assert!(headers
        .get(evently_nats::service::ERROR_HEADER)
        .unwrap()
        .as_str()
        .contains("request"));

    // A service nobody runs: no responders, as a typed error.
    let unserved = RemoteRepository::<Account>::new(client.clone(), "no_such_service").attempts(2);
    let missing = unserved
        .execute(AccountCommand::Deposit {
            id: "alice".into(),
            amount: 1,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(missing, RemoteError::NoResponders { .. }),
        "{missing:?}"
    );
    assert_eq!(missing.status(), 503);

    // Discovery: the instance, its endpoint and its counts.
    let found = discover(&client, &name, Duration::from_millis(300))
        .await
        .unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].id, one.id().await);
    assert_eq!(
        found[0].endpoints,
        vec![("account".to_owned(), format!("{name}.account"))]
    );
    assert_eq!(found[0].requests, 6);
    assert_eq!(found[0].errors, 3, "two rejections and the bad request");
    one.stop().await;
    assert!(discover(&client, &name, Duration::from_millis(300))
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_that_come_and_go_apply_every_acknowledged_command_once() {
    let (name, schema) = (service_name(), schema());
    let slowed = Slowed::default();
    let mut instances = vec![
        instance(&name, &schema, &slowed).await,
        instance(&name, &schema, &slowed).await,
        instance(&name, &schema, &slowed).await,
    ];
    let client = shared_client().await;
    // A deposit of 10 takes 150 ms to decide the first time, longer than
    // the client waits: the client retries it (same command id) on any
    // instance while the first attempt still runs, and the store runs
    // each once.
    let accounts = RemoteRepository::<Account>::new(client.clone(), &name)
        .timeout(Duration::from_millis(60))
        .attempts(50);
    for a in 0..50 {
        accounts
            .execute(AccountCommand::Open {
                id: format!("a{a}"),
                owner: format!("owner {a}"),
            })
            .await
            .unwrap();
    }
    let before = discover(&client, &name, Duration::from_millis(300))
        .await
        .unwrap();
    assert_eq!(before.len(), 3);

    let (progress_tx, mut progress) = tokio::sync::watch::channel(0usize);
    let progress_tx = std::sync::Arc::new(progress_tx);
    let mut clients = Vec::new();
    for c in 0..8usize {
        let accounts = accounts.clone();
        let progress_tx = progress_tx.clone();
        clients.push(tokio::spawn(async move {
            let mut acknowledged: BTreeMap<String, u64> = BTreeMap::new();
            for n in 0..500usize {
                let id = format!("a{}", (c * 7 + n) % 50);
                let amount = (n % 10 + 1) as u64;
                let outcome = accounts
                    .execute(AccountCommand::Deposit {
                        id: id.clone(),
                        amount,
                    })
                    .await
                    .unwrap_or_else(|e| panic!("client {c}, command {n}: {e}"));
                // The answer is true: one deposit of this amount to this account.
                assert_eq!(outcome.stream_id.as_str(), format!("account-{id}"));
                assert_eq!(outcome.events.len(), 1);
                assert_eq!(outcome.events[0].data, AccountEvent::Deposited { amount });
                *acknowledged.entry(id).or_default() += amount;
                progress_tx.send_modify(|p| *p += 1);
            }
            acknowledged
        }));
    }
    // One instance stops a quarter of the way, another starts at half way.
    progress.wait_for(|p| *p >= 1_000).await.unwrap();
    instances.remove(0).stop().await;
    progress.wait_for(|p| *p >= 2_000).await.unwrap();
    instances.push(instance(&name, &schema, &slowed).await);

    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    for client in clients {
        for (id, amount) in client.await.unwrap() {
            *expected.entry(id).or_default() += amount;
        }
    }
    assert_eq!(
        expected.values().sum::<u64>(),
        (0..500u64).map(|n| n % 10 + 1).sum::<u64>() * 8
    );
    let store = pg_store(&schema).await;
    let repository =
        Repository::<Account, _>::with_services(store, SlowAmount::default()).without_cache();
    for (id, amount) in &expected {
        let loaded = repository.load(id).await.unwrap();
        assert_eq!(
            loaded.state.balance, *amount,
            "account {id}: every acknowledged deposit, once"
        );
    }

    // The load was spread: every instance still running served some.
    let after = discover(&client, &name, Duration::from_millis(300))
        .await
        .unwrap();
    assert_eq!(after.len(), 3);
    for found in &after {
        assert!(found.requests > 0, "{found:?}");
    }
    let total: usize = after.iter().map(|i| i.requests).sum();
    assert!(total >= 2_000, "the running instances served {total}");
    assert!(
        slowed.lock().unwrap().len() >= 100,
        "the slow first decisions happened"
    );
    for svc in instances {
        svc.stop().await;
    }
}
