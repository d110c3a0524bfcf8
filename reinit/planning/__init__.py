"""Planning: open the sources, apply the surgery, align the model, and turn rules into a Plan
(what happens to each tensor). Named `planning` because `reinit.plan` is the public function."""
