// A process manager dispatches only the commands its `dispatches` lists: `Audit` lists
// none, so `ChargeCard` (a command of the schema) has no variant in `AuditCommand`.
use orkestra_runtime::HandlerError;
use orkestra_tests::process_managers::fulfil::commands::ChargeCard;
use orkestra_tests::process_managers::fulfil::process_managers::{
    Audit, AuditCommand, AuditContext, AuditEvent, AuditState,
};

struct Auditor;

impl Audit for Auditor {
    async fn handle(
        &self,
        _: &mut AuditState,
        _: &AuditEvent,
        ctx: &mut AuditContext,
    ) -> Result<(), HandlerError> {
        let charge = ChargeCard {
            order_id: ctx.key().to_owned(),
            amount_cents: 1,
        };
        ctx.dispatch(AuditCommand::ChargeCard(charge));
        Ok(())
    }
}

fn main() {}
