package demo

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"log/slog"
	"time"

	"github.com/nixrb-discover/nixrb-discover/advertise"
	"github.com/nixrb-discover/nixrb-discover/wire"
	"golang.org/x/crypto/ssh"
)

// builderSpec is what a demo builder claims it can do. The facts are
// given as overrides, so no nix binary is needed.
type builderSpec struct {
	name     string
	tags     []string
	systems  []string
	features []string
	maxJobs  int
	speed    float64
}

// builder is a tsnet node running the real advertise agent (serving its
// advert on the tailnet) and the simulated SSH endpoint on port 22.
type builder struct {
	spec  builderSpec
	node  *node
	ssh   *sshEndpoint
	agent *advertise.Agent

	stopAgent context.CancelFunc
	agentDone chan error
}

// startBuilder starts the node, the SSH endpoint (which lets in
// clientKey) and the agent, and waits until the agent has published its
// first advert.
func startBuilder(ctx context.Context, tn *inProcTailnet, spec builderSpec, clientKey ssh.PublicKey, log *slog.Logger) (*builder, error) {
	n, err := tn.addNode(ctx, spec.name, spec.tags...)
	if err != nil {
		return nil, err
	}
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	hostKey, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		return nil, err
	}
	ln, err := n.server.Listen("tcp", ":22")
	if err != nil {
		return nil, fmt.Errorf("%s: listen on port 22: %w", spec.name, err)
	}
	b := &builder{spec: spec, node: n, ssh: serveSSH(ln, hostKey, clientKey), agentDone: make(chan error, 1)}
	tn.onClose(b.ssh.kill)

	published := make(chan struct{})
	b.agent = &advertise.Agent{
		Facts: advertise.FactsOptions{Overrides: advertise.Overrides{
			Hostname:          n.fqdn,
			HostKey:           wire.CanonicalHostKey(hostKey.PublicKey()),
			SSHPort:           22,
			Systems:           spec.systems,
			SupportedFeatures: spec.features,
			MandatoryFeatures: []string{},
			MaxJobs:           spec.maxJobs,
			SpeedFactor:       spec.speed,
			AgentVersion:      "demo",
		}},
		Tailnet: &advertise.TailnetServer{LocalAPI: n.lc, Listen: n.server.Listen},
		Logger:  log.With("builder", spec.name),
		OnChange: func(*wire.Advert) {
			select {
			case <-published:
			default:
				close(published)
			}
		},
	}
	actx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	b.stopAgent = cancel
	go func() { b.agentDone <- b.agent.Run(actx) }()
	tn.onClose(func() { b.stop() })
	select {
	case <-published:
		return b, nil
	case err := <-b.agentDone:
		b.agentDone <- err
		return nil, fmt.Errorf("%s: advertise agent: %w", spec.name, err)
	case <-ctx.Done():
		return nil, fmt.Errorf("%s: advertise agent did not publish: %w", spec.name, ctx.Err())
	}
}

// stop stops the agent cleanly (it publishes a draining advert on its way
// out) and returns what Run returned. It is safe to call twice.
func (b *builder) stop() error {
	b.stopAgent()
	select {
	case err := <-b.agentDone:
		b.agentDone <- err
		return err
	case <-time.After(10 * time.Second):
		return fmt.Errorf("%s: advertise agent did not stop within 10s", b.spec.name)
	}
}
