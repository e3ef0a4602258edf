"""Critical findings reach a human: alerts from drafts, notifications (webhook, e-mail, HL7), escalation."""
