// Package helm_test lints and renders the stackport Helm chart with several
// value sets and decodes every rendered manifest strictly into the
// Kubernetes API types.
package helm_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	batchv1 "k8s.io/api/batch/v1"
	"sigs.k8s.io/yaml"

	"github.com/stackport/stackport/internal/lab"
)

func helm(t *testing.T, args ...string) (string, error) {
	t.Helper()
	bin := filepath.Join(lab.Dir(), "bin", "helm")
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("helm is not installed (make lab): %v", err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), "HELM_CACHE_HOME="+t.TempDir(), "HELM_CONFIG_HOME="+t.TempDir(), "HELM_DATA_HOME="+t.TempDir())
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// render returns the rendered manifests by kind.
func render(t *testing.T, values string) (cronJobs []batchv1.CronJob, jobs []batchv1.Job) {
	t.Helper()
	if out, err := helm(t, "lint", "--strict", "stackport", "-f", values); err != nil {
		t.Fatalf("helm lint: %v\n%s", err, out)
	}
	out, err := helm(t, "template", "rel", "stackport", "-f", values)
	if err != nil {
		t.Fatalf("helm template: %v\n%s", err, out)
	}
	for _, doc := range strings.Split(out, "\n---") {
		var meta struct{ Kind string }
		if err := yaml.Unmarshal([]byte(doc), &meta); err != nil {
			t.Fatalf("rendered YAML: %v\n%s", err, doc)
		}
		switch meta.Kind {
		case "":
			continue
		case "CronJob":
			var cj batchv1.CronJob
			if err := yaml.UnmarshalStrict([]byte(doc), &cj); err != nil {
				t.Fatalf("CronJob does not decode strictly: %v\n%s", err, doc)
			}
			cronJobs = append(cronJobs, cj)
		case "Job":
			var j batchv1.Job
			if err := yaml.UnmarshalStrict([]byte(doc), &j); err != nil {
				t.Fatalf("Job does not decode strictly: %v\n%s", err, doc)
			}
			jobs = append(jobs, j)
		default:
			t.Fatalf("unexpected kind %s", meta.Kind)
		}
	}
	return cronJobs, jobs
}

func TestChart(t *testing.T) {
	t.Run("s3 daily", func(t *testing.T) {
		cjs, jobs := render(t, "testdata/s3-daily.yaml")
		if len(cjs) != 1 || len(jobs) != 0 {
			t.Fatalf("%d cronjobs, %d jobs", len(cjs), len(jobs))
		}
		cj := cjs[0]
		if cj.Spec.ConcurrencyPolicy != batchv1.ForbidConcurrent || cj.Spec.Schedule != "0 3 * * *" {
			t.Fatalf("spec: %+v", cj.Spec)
		}
		pod := cj.Spec.JobTemplate.Spec.Template.Spec
		c := pod.Containers[0]
		script := strings.Join(c.Args, " ")
		for _, want := range []string{"stackport snapshot --volume /appsmith-stacks --host \"rel\"", `--exclude "logs"`, `--tag "env=prod"`, "--encrypt-to", "stackport prune --host \"rel\"", "--keep-daily 7"} {
			if !strings.Contains(script, want) {
				t.Errorf("backup command lacks %q: %s", want, script)
			}
		}
		if !c.VolumeMounts[0].ReadOnly || !pod.Volumes[0].PersistentVolumeClaim.ReadOnly {
			t.Error("the volume is not mounted read-only")
		}
		if c.EnvFrom[0].SecretRef.Name != "stackport-aws" || *pod.SecurityContext.RunAsUser != 10001 {
			t.Error("credentials or non-root user missing")
		}
	})
	t.Run("restore gcs", func(t *testing.T) {
		cjs, jobs := render(t, "testdata/restore-gcs.yaml")
		if len(cjs) != 0 || len(jobs) != 1 {
			t.Fatalf("%d cronjobs, %d jobs", len(cjs), len(jobs))
		}
		args := strings.Join(jobs[0].Spec.Template.Spec.Containers[0].Args, " ")
		if args != "restore 20261125T210000Z-3f9a1c --host=rel --volume-to=/restore --chown=1000:1000 --force" {
			t.Fatalf("restore args: %s", args)
		}
	})
	t.Run("all jobs", func(t *testing.T) {
		cjs, jobs := render(t, "testdata/all-jobs.yaml")
		if len(cjs) != 1 || len(jobs) != 2 || *cjs[0].Spec.TimeZone != "Europe/Berlin" {
			t.Fatalf("%d cronjobs, %d jobs", len(cjs), len(jobs))
		}
	})
	t.Run("repository required", func(t *testing.T) {
		if out, err := helm(t, "template", "rel", "stackport"); err == nil || !strings.Contains(out, "repository is required") {
			t.Fatalf("rendering without a repository: %v\n%s", err, out)
		}
	})
}
