//! The README's complete aggregate and its usage snippet (the same code,
//! laid out by rustfmt): if the README's code stops compiling or behaving,
//! this fails.

use es::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
enum AccountEvent {
    Opened { owner: String },
    Deposited { amount: u64 },
    Withdrew { amount: u64 },
}

#[derive(Debug, Clone, Command)]
enum AccountCommand {
    Open { id: String, owner: String },
    Deposit { id: String, amount: u64 },
    Withdraw { id: String, amount: u64 },
}

#[derive(Debug, PartialEq, thiserror::Error)]
enum AccountError {
    #[error("not open")]
    NotOpen,
    #[error("balance {0} is too low")]
    Insufficient(u64),
}

#[derive(Debug, Default, PartialEq, Aggregate)]
#[aggregate(name = "account", event = AccountEvent, command = AccountCommand, error = AccountError)]
struct Account {
    open: bool,
    balance: u64,
}

impl Account {
    fn handle(&self, command: AccountCommand) -> Result<Vec<AccountEvent>, AccountError> {
        match command {
            AccountCommand::Open { owner, .. } => Ok(vec![AccountEvent::Opened { owner }]),
            _ if !self.open => Err(AccountError::NotOpen),
            AccountCommand::Deposit { amount, .. } => Ok(vec![AccountEvent::Deposited { amount }]),
            AccountCommand::Withdraw { amount, .. } if amount > self.balance => {
                Err(AccountError::Insufficient(self.balance))
            }
            AccountCommand::Withdraw { amount, .. } => Ok(vec![AccountEvent::Withdrew { amount }]),
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

#[tokio::test]
async fn the_readme_snippets_run() -> Result<(), Box<dyn std::error::Error>> {
    let accounts = Repository::<Account, _>::new(es::memory::MemoryStore::new());
    accounts
        .execute(AccountCommand::Open {
            id: "alice".into(),
            owner: "Alice".into(),
        })
        .await?;

    es::testing::given::<Account>([AccountEvent::Opened {
        owner: "Alice".into(),
    }])
    .when(AccountCommand::Withdraw {
        id: "alice".into(),
        amount: 5,
    })
    .then_expect_error(AccountError::Insufficient(0));
    accounts
        .execute(AccountCommand::Deposit {
            id: "alice".into(),
            amount: 10,
        })
        .await?;
    assert_eq!(
        accounts.load("alice").await?.state,
        Account {
            open: true,
            balance: 10
        }
    );
    Ok(())
}
