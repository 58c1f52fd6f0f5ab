//! The bank aggregate's handlers and the runtime the benches share (the aggregates bench
//! and the decisions bench's aggregate side run the same commands).

use orkestra_runtime::{Command, HandlerError};
use orkestra_tests::aggregates::bank::aggregates::{Account, AccountEvent, AccountState};
use orkestra_tests::aggregates::bank::commands::{Deposit, OpenAccount, Withdraw};
use orkestra_tests::aggregates::bank::events::{AccountOpened, MoneyDeposited, MoneyWithdrawn};

/// The bank aggregate, as the tests write it.
pub struct Bank;

impl Account for Bank {
    fn apply(state: &mut AccountState, event: &AccountEvent) {
        match event {
            AccountEvent::AccountOpened(_) => state.open = true,
            AccountEvent::MoneyDeposited(e) => state.balance += e.amount,
            AccountEvent::MoneyWithdrawn(e) => state.balance -= e.amount,
        }
    }

    async fn open_account(
        &self,
        _: &AccountState,
        command: &Command<OpenAccount>,
    ) -> Result<Vec<AccountEvent>, HandlerError> {
        Ok(vec![AccountEvent::AccountOpened(AccountOpened {
            account_id: command.account_id.clone(),
            owner: command.owner.clone(),
            currency: command.currency,
        })])
    }

    async fn deposit(
        &self,
        state: &AccountState,
        command: &Command<Deposit>,
    ) -> Result<Vec<AccountEvent>, HandlerError> {
        if !state.open {
            return Err(HandlerError::reject("not open"));
        }
        Ok(vec![AccountEvent::MoneyDeposited(MoneyDeposited {
            account_id: command.account_id.clone(),
            amount: command.amount,
        })])
    }

    async fn withdraw(
        &self,
        _: &AccountState,
        command: &Command<Withdraw>,
    ) -> Result<Vec<AccountEvent>, HandlerError> {
        Ok(vec![AccountEvent::MoneyWithdrawn(MoneyWithdrawn {
            account_id: command.account_id.clone(),
            amount: command.amount,
        })])
    }
}

/// A two-worker runtime.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}
