// Package client is Regent's Go SDK.
//
// A Client keeps one session with one server of a list, for its whole life:
// it reconnects with backoff to the next server when the session breaks, and
// then redoes every registration and subscription, retrying each until it
// succeeds (a deregister issued meanwhile wins). Subscribed services are
// cached, so lookups keep working while no server answers. The client id is
// generated once per Client and kept across reconnects, so a reconnect moves
// ownership of its instances without a gap.
//
//	c, err := client.New(client.Config{Servers: []string{"127.0.0.1:7400"}})
//	defer c.Close()
//	err = c.Register(ctx, client.Service{Name: "orders"}, client.Instance{IP: "10.0.0.7", Port: 8080})
//	inst, err := c.PickOne(ctx, client.Service{Name: "orders"})
package client
