// The README's domain, shared by its code blocks (each block is a doc
// test of the `evently` crate, which includes this file in a hidden line) and
// by tests/readme.rs. The README shows the same aggregate in full.

pub use evently::prelude::*;
pub use futures::future::BoxFuture;
pub use serde::{Deserialize, Serialize};
pub use serde_json::json;
pub use std::sync::Arc;
pub use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
pub enum AccountEvent {
    Opened { owner: String },
    Deposited { amount: u64 },
    Withdrew { amount: u64 },
}

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
pub enum AccountCommand {
    Open { id: String, owner: String },
    Deposit { id: String, amount: u64 },
    Withdraw { id: String, amount: u64 },
}

#[derive(Debug, PartialEq, thiserror::Error)]
pub enum AccountError {
    #[error("not open")]
    NotOpen,
    #[error("balance {0} is too low")]
    Insufficient(u64),
}

#[derive(Debug, Default, PartialEq, Serialize, Deserialize, Aggregate)]
#[aggregate(name = "account", event = AccountEvent, command = AccountCommand, error = AccountError)]
pub struct Account {
    pub open: bool,
    pub balance: u64,
}

impl Account {
    pub fn decide(&self, command: AccountCommand) -> Result<Vec<AccountEvent>, AccountError> {
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
    pub fn apply(&mut self, event: &AccountEvent) {
        match event {
            AccountEvent::Opened { .. } => self.open = true,
            AccountEvent::Deposited { amount } => self.balance += amount,
            AccountEvent::Withdrew { amount } => self.balance -= amount,
        }
    }
}

/// The payment of the README's section on services.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
pub enum PaymentEvent {
    Paid { amount: u64 },
}

#[derive(Debug, Clone, Command)]
pub enum PaymentCommand {
    Pay { id: String, amount: u64 },
}

#[derive(Debug, PartialEq, thiserror::Error)]
pub enum PaymentError {
    #[error("refused: {0}")]
    Fraud(String),
}
