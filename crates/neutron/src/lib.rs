//! The drop-in front end for neutron-l3-agent: oslo.config INI files and oslo.messaging's RPC over AMQP 0-9-1 (RabbitMQ), as neutron-server speaks it.
