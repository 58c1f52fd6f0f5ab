// An aggregate implementation without the decide method of one of its commands does not
// compile: every command listed in the schema must be decided.
use orkestra_runtime::{Command, HandlerError};
use orkestra_tests::aggregates::bank::aggregates::{Account, AccountEvent, AccountState};
use orkestra_tests::aggregates::bank::commands::{Deposit, OpenAccount};

struct Bank;

impl Account for Bank {
    fn apply(_: &mut AccountState, _: &AccountEvent) {}

    async fn open_account(
        &self,
        _: &AccountState,
        _: &Command<OpenAccount>,
    ) -> Result<Vec<AccountEvent>, HandlerError> {
        Ok(Vec::new())
    }

    async fn deposit(
        &self,
        _: &AccountState,
        _: &Command<Deposit>,
    ) -> Result<Vec<AccountEvent>, HandlerError> {
        Ok(Vec::new())
    }
}

fn main() {}
