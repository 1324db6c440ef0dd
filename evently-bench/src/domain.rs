//! The bank-account domain of `examples/bank_account/main.rs` (open, deposit,
//! withdraw), with the state serialisable so that W4 can snapshot it, and
//! the payload shapes the hand-written floors decode by themselves.

use evently::prelude::*;
use serde::{Deserialize, Serialize};

/// What happened to an account.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
pub enum AccountEvent {
    /// The account was opened.
    Opened {
        /// Its owner.
        owner: String,
    },
    /// Money came in.
    Deposited {
        /// How much.
        amount: u64,
    },
    /// Money went out.
    Withdrew {
        /// How much.
        amount: u64,
    },
}

/// What a client asks of an account; `id` names the account.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
pub enum AccountCommand {
    /// Open the account.
    Open {
        /// The account.
        id: String,
        /// Its owner.
        owner: String,
    },
    /// Put money in.
    Deposit {
        /// The account.
        id: String,
        /// How much (more than zero).
        amount: u64,
    },
    /// Take money out (at most the balance). Part of the domain; the
    /// workloads only deposit.
    #[allow(dead_code)]
    Withdraw {
        /// The account.
        id: String,
        /// How much (more than zero).
        amount: u64,
    },
}

/// Why an account refuses a command.
#[derive(Debug, PartialEq, Serialize, Deserialize, thiserror::Error)]
pub enum AccountError {
    /// Opened twice.
    #[error("the account is already open")]
    AlreadyOpen,
    /// Used before it was opened.
    #[error("the account is not open")]
    NotOpen,
    /// A zero amount.
    #[error("an amount must be more than zero")]
    ZeroAmount,
    /// An overdraft.
    #[error("insufficient funds: balance {balance}, requested {requested}")]
    InsufficientFunds {
        /// What the account holds.
        balance: u64,
        /// What was asked.
        requested: u64,
    },
}

/// An account's state, rebuilt from its events (serialisable: snapshots).
#[derive(Debug, Default, PartialEq, Serialize, Deserialize, Aggregate)]
#[aggregate(name = "account", event = AccountEvent, command = AccountCommand, error = AccountError)]
pub struct Account {
    /// Whether it was opened.
    pub open: bool,
    /// What it holds.
    pub balance: u64,
}

impl Account {
    fn decide(&self, command: AccountCommand) -> Result<Vec<AccountEvent>, AccountError> {
        use AccountCommand::*;
        match command {
            Open { .. } if self.open => Err(AccountError::AlreadyOpen),
            Open { owner, .. } => Ok(vec![AccountEvent::Opened { owner }]),
            _ if !self.open => Err(AccountError::NotOpen),
            Deposit { amount: 0, .. } | Withdraw { amount: 0, .. } => Err(AccountError::ZeroAmount),
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

    /// Folds one event into the state (also used by the hand-written floors,
    /// which have to fold too).
    pub fn apply(&mut self, event: &AccountEvent) {
        match event {
            AccountEvent::Opened { .. } => self.open = true,
            AccountEvent::Deposited { amount } => self.balance += amount,
            AccountEvent::Withdrew { amount } => self.balance -= amount,
        }
    }
}

/// The stored payload of `Opened`, as a hand-written reader declares it.
#[derive(Serialize, Deserialize)]
pub struct OpenedPayload {
    /// The owner.
    pub owner: String,
}

/// The stored payload of `Deposited` and `Withdrew`.
#[derive(Serialize, Deserialize)]
pub struct AmountPayload {
    /// The amount.
    pub amount: u64,
}

/// Decodes a stored row (type name and payload text) by hand, the way a
/// program without the framework would.
pub fn decode_by_hand(event_type: &str, payload: &str) -> Result<AccountEvent, String> {
    let bad = |e: serde_json::Error| format!("{event_type} payload {payload:?}: {e}");
    Ok(match event_type {
        "Opened" => AccountEvent::Opened {
            owner: serde_json::from_str::<OpenedPayload>(payload)
                .map_err(bad)?
                .owner,
        },
        "Deposited" => AccountEvent::Deposited {
            amount: serde_json::from_str::<AmountPayload>(payload)
                .map_err(bad)?
                .amount,
        },
        "Withdrew" => AccountEvent::Withdrew {
            amount: serde_json::from_str::<AmountPayload>(payload)
                .map_err(bad)?
                .amount,
        },
        other => return Err(format!("unknown event type {other:?}")),
    })
}

/// The amount of the `i`-th deposit of a workload: 1 to 97, so sums are
/// checkable and payloads have realistic, varying lengths.
pub fn amount(i: usize) -> u64 {
    (i % 97) as u64 + 1
}
