// A decision appends only the events it lists in `emits`: an event it reads but does not
// emit has no variant of its emit enum.
use orkestra_runtime::{Command, HandlerError};
use orkestra_tests::decisions::courses::commands::SubscribeStudent;
use orkestra_tests::decisions::courses::decisions::{
    Subscription, SubscriptionEmit, SubscriptionEvent, SubscriptionReads, SubscriptionState,
};
use orkestra_tests::decisions::courses::events::CourseDefined;
use orkestra_tests::decisions::courses::types::Level;

struct Seats;

impl Subscription for Seats {
    fn apply(_: &mut SubscriptionState, _: &SubscriptionEvent, _: SubscriptionReads) {}

    async fn decide(
        &self,
        _: &SubscriptionState,
        cmd: &Command<SubscribeStudent>,
    ) -> Result<Vec<SubscriptionEmit>, HandlerError> {
        Ok(vec![SubscriptionEmit::CourseDefined(CourseDefined {
            course_id: cmd.course_id.clone(),
            capacity: 1,
            level: Level::Basic,
        })])
    }
}

fn main() {}
