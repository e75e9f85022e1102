package redisstore

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/redis/go-redis/v9"
)

// errClusterNode is wrapped by New's error for a plain client on a Redis
// Cluster node: every admission would get MOVED.
var errClusterNode = errors.New("redisstore: the address is a Redis Cluster node")

// notClusterNode refuses a single-node client whose server is a Cluster
// node (INFO cluster says cluster_enabled:1): its keys would mostly live
// on other nodes, and every call would fail with MOVED.
func (s *Store) notClusterNode(ctx context.Context) error {
	c, ok := s.client.(*redis.Client)
	if !ok {
		return nil
	}
	info, err := c.Info(ctx, "cluster").Result()
	if err != nil {
		return err
	}
	if strings.Contains(info, "cluster_enabled:1") {
		return fmt.Errorf("%w (%s): list the cluster's nodes in state.redis.addrs (two or more addresses select the cluster client), or build the store on a *redis.ClusterClient, with a prefix holding a hash tag such as \"{wslimit}:\"",
			errClusterNode, c.Options().Addr)
	}
	return nil
}
