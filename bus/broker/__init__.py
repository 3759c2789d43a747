"""civicbus and RabbitMQ: topology, connections, publishing with confirms."""
