//! A process manager whose commands go to another service over NATS
//! (`RemoteRepository` as its dispatcher): its runners killed again and
//! again, each command still runs once in the other service.

mod support;

use std::time::Duration;

use evently_core::deadline::SystemClock;
use evently_core::prelude::*;
use evently_core::process::{run_process, ProcessInput, ProcessManager, ProcessOptions};
use evently_memory::MemoryStore;
use evently_nats::{CommandService, RemoteRepository};
use serde::{Deserialize, Serialize};
use support::*;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
enum WalletEvent {
    Created,
    Credited { amount: u64 },
}

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
enum WalletCommand {
    Create { id: String },
    Credit { id: String, amount: u64 },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("no such wallet")]
struct NoWallet;

#[derive(Debug, Default, Aggregate)]
#[aggregate(name = "wallet", event = WalletEvent, command = WalletCommand, error = NoWallet)]
struct Wallet {
    created: bool,
    balance: u64,
}

impl Wallet {
    fn decide(&self, command: WalletCommand) -> Result<Vec<WalletEvent>, NoWallet> {
        match command {
            WalletCommand::Create { .. } => Ok(vec![WalletEvent::Created]),
            WalletCommand::Credit { .. } if !self.created => Err(NoWallet),
            WalletCommand::Credit { amount, .. } => Ok(vec![WalletEvent::Credited { amount }]),
        }
    }

    fn apply(&mut self, event: &WalletEvent) {
        match event {
            WalletEvent::Created => self.created = true,
            WalletEvent::Credited { amount } => self.balance += amount,
        }
    }
}

/// Every new wallet gets a welcome credit of 10, once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
enum WelcomeEvent {
    Welcomed { wallet: String },
}

#[derive(Debug, thiserror::Error)]
#[error("already welcomed")]
struct Already;

#[derive(Debug, Default, Aggregate)]
#[aggregate(name = "welcome", event = WelcomeEvent, command = ProcessInput<WalletEvent, WalletCommand>, error = Already)]
struct Welcome {
    done: bool,
}

impl Welcome {
    fn decide(
        &self,
        input: ProcessInput<WalletEvent, WalletCommand>,
    ) -> Result<Vec<WelcomeEvent>, Already> {
        match input {
            ProcessInput::Event(e) if !self.done && e.data == WalletEvent::Created => {
                Ok(vec![WelcomeEvent::Welcomed {
                    wallet: e.aggregate_id().unwrap_or_default().to_owned(),
                }])
            }
            _ => Err(Already),
        }
    }

    fn apply(&mut self, _: &WelcomeEvent) {
        self.done = true;
    }
}

impl ProcessManager for Welcome {
    type Input = WalletEvent;
    type Output = WalletCommand;

    fn route(event: &RecordedEvent<WalletEvent>) -> Option<String> {
        event.aggregate_id().map(str::to_owned)
    }

    fn commands(event: &WelcomeEvent) -> Vec<WalletCommand> {
        let WelcomeEvent::Welcomed { wallet } = event;
        vec![WalletCommand::Credit {
            id: wallet.clone(),
            amount: 10,
        }]
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_sends_over_nats_once_however_often_its_runners_die() {
    // The wallets service, on NATS.
    let name = format!("wallets_{}", uuid::Uuid::now_v7().simple());
    let client = shared_client().await;
    let wallets_store = MemoryStore::new();
    let mut service = CommandService::start(&client, &name, "1.0.0")
        .await
        .unwrap();
    service
        .serve(Repository::<Wallet, _>::new(wallets_store.clone()), 16)
        .await
        .unwrap();
    let wallets = RemoteRepository::<Wallet>::new(client.clone(), &name);

    // The welcome process, in a store of its own, follows the wallets'
    // log and credits through the service.
    let welcome_store = MemoryStore::new();
    let welcomes = Repository::<Welcome, _>::new(welcome_store.clone());
    let start = || {
        run_process(
            welcomes.clone(),
            wallets_store.clone(),
            wallets.clone(),
            SystemClock,
            ProcessOptions::default(),
        )
    };
    let mut running = start();
    for n in 0..200 {
        wallets
            .execute(WalletCommand::Create {
                id: format!("w{n}"),
            })
            .await
            .unwrap();
        if n % 10 == 9 {
            // Killed and started again, wherever it was.
            running.abort();
            running = start();
        }
    }
    // Every wallet welcomed: 200 process events, each one's credit sent.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let head = welcome_store.head_position().await.unwrap();
        if head == 200 {
            running
                .sender
                .wait_for(head, Duration::from_secs(30))
                .await
                .unwrap();
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{head} welcomed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    running.stop().await;
    service.stop().await;
    for n in 0..200 {
        let wallet = Repository::<Wallet, _>::new(wallets_store.clone())
            .load(&format!("w{n}"))
            .await
            .unwrap();
        assert_eq!(
            (wallet.state.balance, wallet.version),
            (10, 2),
            "w{n}: one welcome credit"
        );
    }
}
