# Packages, built from this checkout into dist/ (README: "Packages"):
#   make deb   dist/sendpost-agent_VERSION_ARCH.deb, for Debian 12's python3
#   make rpm   dist/sendpost-agent-VERSION-1.ARCH.rpm, for RHEL 9 (Python 3.11 from AppStream)
# Both compile the hot modules with mypyc while building (needs PyPI for the build
# requirements of pyproject.toml); the mail server needs no compiler and no network.
# The version is pyproject.toml's, nowhere else.

VERSION := $(shell sed -n 's/^version = "\(.*\)"$$/\1/p' pyproject.toml)
MAINTAINER := $(shell sed -n 's/^Maintainer: //p' debian/control)
DEB_ARCH := $(shell dpkg --print-architecture)
RPM_ARCH := $(shell uname -m)
# The package's date is the last commit's, so a rebuild of one commit is the same package.
DATE := $(shell git log -1 --format=%cD 2>/dev/null || date -R)
RPM_DATE := $(shell LC_ALL=C date -d '$(DATE)' '+%a %b %d %Y')
STAGE := build/pkg

DEB := dist/sendpost-agent_$(VERSION)_$(DEB_ARCH).deb
RPM := dist/sendpost-agent-$(VERSION)-1.$(RPM_ARCH).rpm

.PHONY: deb rpm clean-packages
deb: $(DEB)
rpm: $(RPM)

# The source tree as git would check it out (working-tree edits included, ignored files
# such as .venv/ and compiled modules left out), so that a build never sees local leftovers.
define stage
	rm -rf $(1)
	mkdir -p $(1)
	tar -c --exclude-vcs --exclude-vcs-ignores --exclude=./build --exclude=./dist --exclude=./.venv . \
		| tar -x -C $(1)
endef

# The manual page is `sendpost-agent --help` itself, so the two never disagree.
build/sendpost-agent.1: sendpost_agent/cli.py sendpost_agent/config.py packaging/sendpost-agent.h2m
	mkdir -p build
	PYTHONPATH=. help2man --no-info --include packaging/sendpost-agent.h2m --output $@ \
		--name "reports Postfix delivery events to SendPost" "/usr/bin/python3 -m sendpost_agent"

$(DEB): FORCE
	$(call stage,$(STAGE)/deb/sendpost-agent-$(VERSION))
	printf 'sendpost-agent (%s) stable; urgency=medium\n\n  * Release %s (README.md).\n\n -- %s  %s\n' \
		'$(VERSION)' '$(VERSION)' '$(MAINTAINER)' '$(DATE)' \
		>$(STAGE)/deb/sendpost-agent-$(VERSION)/debian/changelog
	cd $(STAGE)/deb/sendpost-agent-$(VERSION) && dpkg-buildpackage --build=binary -us -uc
	mkdir -p dist
	cp $(STAGE)/deb/sendpost-agent_$(VERSION)_$(DEB_ARCH).deb $@

$(RPM): FORCE
	$(call stage,$(STAGE)/rpm/src/sendpost-agent-$(VERSION))
	mkdir -p $(STAGE)/rpm/SOURCES dist
	tar -czf $(STAGE)/rpm/SOURCES/sendpost-agent-$(VERSION).tar.gz \
		-C $(STAGE)/rpm/src sendpost-agent-$(VERSION)
	rpmbuild -bb --define "_topdir $(CURDIR)/$(STAGE)/rpm" --define "version $(VERSION)" \
		--define "packager $(MAINTAINER)" --define "changelog_date $(RPM_DATE)" \
		packaging/rpm/sendpost-agent.spec
	cp $(STAGE)/rpm/RPMS/$(RPM_ARCH)/sendpost-agent-$(VERSION)-1.$(RPM_ARCH).rpm $@

FORCE:

clean-packages:
	rm -rf $(STAGE) dist
