//! National clouds: where each one's login authority and Microsoft Graph live, and the
//! overrides that send every cloud's traffic somewhere else (tests, air-gapped setups).

use std::fmt;
use std::str::FromStr;

use url::Url;

/// An Entra national cloud. Tokens never cross clouds; an app is registered per cloud.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Cloud {
    /// Global Azure.
    Global,
    /// US Government L4 (GCC High).
    UsGov,
    /// US Government L5 (DoD).
    UsGovDod,
    /// China, operated by 21Vianet.
    China,
}

impl Cloud {
    /// Every cloud.
    pub const ALL: [Cloud; 4] = [Cloud::Global, Cloud::UsGov, Cloud::UsGovDod, Cloud::China];

    /// The name used in the API (`global`, `usgov`, `usgovdod`, `china`).
    pub fn as_str(self) -> &'static str {
        match self {
            Cloud::Global => "global",
            Cloud::UsGov => "usgov",
            Cloud::UsGovDod => "usgovdod",
            Cloud::China => "china",
        }
    }

    /// The login authority's base URL.
    pub fn authority(self) -> &'static str {
        match self {
            Cloud::Global => "https://login.microsoftonline.com",
            Cloud::UsGov | Cloud::UsGovDod => "https://login.microsoftonline.us",
            Cloud::China => "https://login.partner.microsoftonline.cn",
        }
    }

    /// Microsoft Graph's base URL.
    pub fn graph(self) -> &'static str {
        match self {
            Cloud::Global => "https://graph.microsoft.com",
            Cloud::UsGov => "https://graph.microsoft.us",
            Cloud::UsGovDod => "https://dod-graph.microsoft.us",
            Cloud::China => "https://microsoftgraph.chinacloudapi.cn",
        }
    }
}

impl fmt::Display for Cloud {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A cloud name that is not one of ours.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown cloud {0:?}; expected global, usgov, usgovdod or china")]
pub struct UnknownCloud(pub String);

impl FromStr for Cloud {
    type Err = UnknownCloud;

    fn from_str(s: &str) -> Result<Cloud, UnknownCloud> {
        Cloud::ALL
            .into_iter()
            .find(|c| c.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownCloud(s.to_string()))
    }
}

/// Where login and Graph requests go. By default each cloud's own hosts; an override
/// replaces the base URL for every cloud. Overrides change where documents are fetched
/// from, never which issuers are accepted: those come from the metadata served.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Endpoints {
    login_override: Option<Url>,
    graph_override: Option<Url>,
}

impl Endpoints {
    /// Endpoints with optional overrides; plain http is refused unless the host is loopback.
    pub fn new(
        login_override: Option<&str>,
        graph_override: Option<&str>,
    ) -> Result<Endpoints, String> {
        Ok(Endpoints {
            login_override: login_override.map(checked_base).transpose()?,
            graph_override: graph_override.map(checked_base).transpose()?,
        })
    }

    /// The login base URL for a cloud, without a trailing slash.
    pub fn login(&self, cloud: Cloud) -> String {
        match &self.login_override {
            Some(url) => url.as_str().trim_end_matches('/').to_string(),
            None => cloud.authority().to_string(),
        }
    }

    /// The Graph base URL for a cloud, without a trailing slash.
    pub fn graph(&self, cloud: Cloud) -> String {
        match &self.graph_override {
            Some(url) => url.as_str().trim_end_matches('/').to_string(),
            None => cloud.graph().to_string(),
        }
    }

    /// Points a URL named in served metadata (for example `jwks_uri`) at the override when
    /// it names a cloud's own authority (with an override every cloud shares one key source,
    /// whichever cloud's metadata it serves); other URLs must be https or loopback.
    pub fn rebase_login_url(&self, cloud: Cloud, url: &str) -> Result<String, String> {
        let own = |c: Cloud| url.strip_prefix(c.authority());
        let rest = match self.login_override {
            Some(_) => own(cloud).or_else(|| Cloud::ALL.into_iter().find_map(own)),
            None => None,
        };
        let rebased = match rest {
            Some(rest) => format!("{}{rest}", self.login(cloud)),
            None => url.to_string(),
        };
        checked_base(&rebased)?;
        Ok(rebased)
    }
}

fn checked_base(s: &str) -> Result<Url, String> {
    let url = Url::parse(s).map_err(|e| format!("{s:?} is not a URL ({e})"))?;
    let loopback = match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    };
    match url.scheme() {
        "https" => Ok(url),
        "http" if loopback => Ok(url),
        "http" => Err(format!(
            "{s:?} uses plain http to a host that is not loopback"
        )),
        other => Err(format!("{s:?} has scheme {other}; expected https")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cloud_names_round_trip() {
        for cloud in Cloud::ALL {
            assert_eq!(cloud.as_str().parse::<Cloud>().unwrap(), cloud);
        }
        assert_eq!("USGov".parse::<Cloud>().unwrap(), Cloud::UsGov);
        assert!("germany".parse::<Cloud>().is_err());
    }

    #[test]
    fn each_cloud_has_its_own_hosts() {
        assert_eq!(Cloud::UsGovDod.graph(), "https://dod-graph.microsoft.us");
        assert_eq!(Cloud::UsGovDod.authority(), Cloud::UsGov.authority());
        assert_eq!(
            Cloud::China.authority(),
            "https://login.partner.microsoftonline.cn"
        );
    }

    #[test]
    fn overrides_apply_to_every_cloud_and_refuse_remote_http() {
        let e = Endpoints::new(
            Some("http://127.0.0.1:9000/"),
            Some("http://localhost:9001"),
        )
        .unwrap();
        for cloud in Cloud::ALL {
            assert_eq!(e.login(cloud), "http://127.0.0.1:9000");
            assert_eq!(e.graph(cloud), "http://localhost:9001");
        }
        assert!(Endpoints::new(Some("http://login.example.com"), None).is_err());
        assert!(Endpoints::new(None, Some("ftp://127.0.0.1")).is_err());
        assert_eq!(
            Endpoints::default().login(Cloud::Global),
            "https://login.microsoftonline.com"
        );
    }

    #[test]
    fn metadata_urls_follow_the_override() {
        let e = Endpoints::new(Some("http://127.0.0.1:9000"), None).unwrap();
        assert_eq!(
            e.rebase_login_url(
                Cloud::Global,
                "https://login.microsoftonline.com/common/discovery/v2.0/keys"
            )
            .unwrap(),
            "http://127.0.0.1:9000/common/discovery/v2.0/keys"
        );
        assert!(
            e.rebase_login_url(Cloud::Global, "http://evil.example/keys")
                .is_err()
        );
        let plain = Endpoints::default();
        assert_eq!(
            plain
                .rebase_login_url(
                    Cloud::China,
                    "https://login.partner.microsoftonline.cn/common/discovery/keys"
                )
                .unwrap(),
            "https://login.partner.microsoftonline.cn/common/discovery/keys"
        );
    }
}
