"""Export: configured destinations and durable, retried deliveries of report documents."""
