// entra-connector on Azure Functions Flex Consumption: the function app (custom handler),
// one storage account reached only by identity, Key Vault with RBAC, Application Insights
// on Log Analytics, and a user-assigned identity holding the least roles the code needs.
// No secret is in any app setting. The guide is docs/deploy.md:
//
//   infra/package.sh
//   az deployment group create -g <rg> -f infra/main.bicep -p @infra/main.parameters.json
//   az functionapp deployment source config-zip -g <rg> -n <functionAppName> --src dist.zip
//
// tests/tests/deploy_bicep.rs checks this file against the code (settings, roles, modules,
// parameters), since no Bicep compiler runs where the tests do.

targetScope = 'resourceGroup'

@description('Prefix of every resource name: 3-11 lowercase letters and digits, starting with a letter.')
@minLength(3)
@maxLength(11)
param name string

@description('Region of every resource; it must offer Flex Consumption (az functionapp list-flexconsumption-locations).')
param location string = resourceGroup().location

@description('Entra cloud of the operator\'s tenant, the cloud this is deployed to: global, usgov (GCC High), usgovdod (DoD) or china.')
@allowed(['global', 'usgov', 'usgovdod', 'china'])
param cloud string = 'global'

@description('Client id of the multi-tenant app registration; used in every cloud that has no own id below.')
param entraClientId string

@description('Client id of the app registered in US Gov L4, if registered there.')
param entraClientIdUsGov string = ''

@description('Client id of the app registered in US Gov L5 (DoD), if registered there.')
param entraClientIdUsGovDod string = ''

@description('Client id of the app registered in China (21Vianet), if registered there.')
param entraClientIdChina string = ''

@description('App ID URI of the app registration (api://<client id>), also accepted as token audience; empty for none.')
param entraAppIdUri string = ''

@description('The operator\'s tenant, whose admins manage the service.')
param entraAdminTenantId string = subscription().tenantId

@description('App role that admin tokens must carry.')
param entraAdminRole string = 'Integration.Manage'

@description('Comma-separated scopes of the product\'s API that grants may give, e.g. records.read,records.write.')
param connectorScopes string = ''

@description('Where browsers reach the service, without a trailing slash (a custom domain); empty: https://<default host name>.')
param publicBaseUrl string = ''

@description('Prefix of every table name (letters and digits, starting with a letter). The account is this deployment\'s own, so usually empty.')
@maxLength(20)
param tablePrefix string = ''

@description('Log level or tracing filter (info, debug, handler=debug,info).')
param logLevel string = 'info'

@description('How often each tenant\'s directory is synced from Microsoft Graph, in minutes.')
@minValue(5)
@maxValue(1440)
param syncIntervalMinutes int = 45

@description('How long a tenant\'s sync lease lasts unless renewed, in seconds.')
@minValue(3)
@maxValue(600)
param syncLeaseSeconds int = 60

@description('How long a consent callback waits for Microsoft to confirm, in seconds.')
@minValue(0)
@maxValue(120)
param consentConfirmSeconds int = 20

@description('How long a pending tenant may stay unconfirmed, in minutes.')
@minValue(0)
@maxValue(10080)
param consentPendingMinutes int = 1440

@description('How long audit events are kept, in days (Housekeeping trims whole days).')
@minValue(1)
@maxValue(3650)
param auditRetentionDays int = 90

@description('A HR plan that would disable more than this percentage of a tenant\'s users is applied only when confirmed.')
@minValue(0)
@maxValue(100)
param hrMaxDisablePercent int = 5

@description('SMTP relay for failure notifications (STARTTLS); empty: no e-mail, webhooks only.')
param smtpHost string = ''

@description('SMTP port (587 for submission with STARTTLS).')
@minValue(1)
@maxValue(65535)
param smtpPort int = 587

@description('Sender address of notification e-mails, e.g. Entra Connector <alerts@contoso.com>; required with smtpHost.')
param smtpFrom string = ''

@description('SMTP user name; its password is a Key Vault secret named by smtpPasswordSecretName.')
param smtpUsername string = ''

@description('Name of the Key Vault secret holding the SMTP password (with smtpUsername).')
param smtpPasswordSecretName string = ''

@description('How long SCIM reads may serve a user this instance read, in seconds.')
@minValue(0)
@maxValue(60)
param scimReadCacheSeconds int = 5

@description('Validity of a user certificate when the request names none, in days.')
@minValue(1)
@maxValue(3650)
param certDefaultValidityDays int = 365

@description('RSA size of keys the service makes when the request names none.')
@allowed([2048, 3072, 4096])
param certDefaultKeySize int = 2048

@description('Revoke a user\'s certificates when Graph sync or SCIM disables or deletes the user.')
param certRevokeOnDisable bool = true

@description('3072- and 4096-bit keys kept ready per size.')
@minValue(0)
@maxValue(16)
param certKeyPoolSize int = 2

@description('Memory of each instance, in MB.')
@allowed([512, 2048, 4096])
param instanceMemoryMB int = 2048

@description('Most instances the app scales out to.')
@minValue(1)
@maxValue(1000)
param maximumInstanceCount int = 40

@description('Days Log Analytics keeps logs.')
@minValue(30)
@maxValue(730)
param logRetentionDays int = 30

@description('More app settings (documented in docs/settings.md); never a secret. The settings above win over these.')
param extraAppSettings object = {}

@description('Tags for every resource.')
param tags object = {}

@description('Key Vault name (3-24 letters, digits and dashes), to pick a new one when the default name is held by a deleted vault (docs/deploy.md); empty: <name>-kv-<unique suffix>.')
@maxLength(24)
param keyVaultName string = ''

// Each cloud's login authority and Microsoft Graph, as the handler knows them
// (crates/entra/src/cloud.rs; a test keeps the two in step). Storage and Key Vault
// endpoints need no table: they come from the resources, right in whichever cloud this
// is deployed to.
var clouds = {
  global: {
    login: 'https://login.microsoftonline.com'
    graph: 'https://graph.microsoft.com'
  }
  usgov: {
    login: 'https://login.microsoftonline.us'
    graph: 'https://graph.microsoft.us'
  }
  usgovdod: {
    login: 'https://login.microsoftonline.us'
    graph: 'https://dod-graph.microsoft.us'
  }
  china: {
    login: 'https://login.partner.microsoftonline.cn'
    graph: 'https://microsoftgraph.chinacloudapi.cn'
  }
}

// Storage account names must be lowercase; `name` is lowered here too rather than only
// described as lowercase, so that a capital letter cannot fail the deployment halfway.
// The suffix follows the resource group's id: redeploying updates the same resources.
var suffix = uniqueString(resourceGroup().id)
var prefix = toLower(name)
var appName = '${prefix}-${suffix}'
var deploymentContainerName = 'app-package'

module identity 'modules/identity.bicep' = {
  name: 'identity'
  params: {
    name: '${prefix}-identity'
    location: location
    tags: tags
  }
}

module storage 'modules/storage.bicep' = {
  name: 'storage'
  params: {
    name: take('${prefix}${suffix}', 24)
    location: location
    tags: tags
    deploymentContainerName: deploymentContainerName
  }
}

module keyVault 'modules/keyvault.bicep' = {
  name: 'keyVault'
  params: {
    name: empty(keyVaultName) ? take('${prefix}-kv-${suffix}', 24) : keyVaultName
    location: location
    tags: tags
  }
}

module monitoring 'modules/monitoring.bicep' = {
  name: 'monitoring'
  params: {
    workspaceName: '${prefix}-logs'
    insightsName: '${prefix}-insights'
    location: location
    tags: tags
    retentionInDays: logRetentionDays
  }
}

module roles 'modules/roles.bicep' = {
  name: 'roles'
  params: {
    principalId: identity.outputs.principalId
    storageAccountName: storage.outputs.name
    keyVaultName: keyVault.outputs.name
    insightsName: monitoring.outputs.insightsName
  }
}

module functionApp 'modules/functionapp.bicep' = {
  name: 'functionApp'
  params: {
    planName: '${prefix}-plan'
    appName: appName
    location: location
    tags: tags
    identityId: identity.outputs.id
    deploymentContainerUrl: storage.outputs.deploymentContainerUrl
    instanceMemoryMB: instanceMemoryMB
    maximumInstanceCount: maximumInstanceCount
  }
}

var publicUrl = empty(publicBaseUrl) ? 'https://${functionApp.outputs.defaultHostName}' : publicBaseUrl

resource site 'Microsoft.Web/sites@2024-04-01' existing = {
  name: appName
}

// Every setting the handler reads (docs/settings.md) and the host's identity-based
// connections. Set after the roles, so the first start finds its access in place. Not
// here on purpose: see docs/deploy.md, "Settings the template leaves out".
resource appSettings 'Microsoft.Web/sites/config@2024-04-01' = {
  parent: site
  name: 'appsettings'
  dependsOn: [
    functionApp
    roles
  ]
  properties: union(extraAppSettings, {
    AzureWebJobsStorage__credential: 'managedidentity'
    AzureWebJobsStorage__clientId: identity.outputs.clientId
    AzureWebJobsStorage__blobServiceUri: storage.outputs.blobEndpoint
    AzureWebJobsStorage__queueServiceUri: storage.outputs.queueEndpoint
    AzureWebJobsStorage__tableServiceUri: storage.outputs.tableEndpoint
    APPLICATIONINSIGHTS_CONNECTION_STRING: monitoring.outputs.connectionString
    APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'ClientId=${identity.outputs.clientId};Authorization=AAD'
    STORAGE_TABLE_PREFIX: tablePrefix
    LOG_FORMAT: 'json'
    LOG_LEVEL: logLevel
    ENTRA_CLIENT_ID: entraClientId
    ENTRA_CLIENT_ID_USGOV: entraClientIdUsGov
    ENTRA_CLIENT_ID_USGOVDOD: entraClientIdUsGovDod
    ENTRA_CLIENT_ID_CHINA: entraClientIdChina
    ENTRA_APP_ID_URI: entraAppIdUri
    ENTRA_ADMIN_TENANT_ID: entraAdminTenantId
    ENTRA_ADMIN_CLOUD: cloud
    ENTRA_ADMIN_ROLE: entraAdminRole
    KEY_VAULT_URI: keyVault.outputs.uri
    KEY_VAULT_CLIENT_ID: identity.outputs.clientId
    PUBLIC_BASE_URL: publicUrl
    CONNECTOR_SCOPES: connectorScopes
    CONSENT_CONFIRM_SECONDS: string(consentConfirmSeconds)
    CONSENT_PENDING_MINUTES: string(consentPendingMinutes)
    SCIM_READ_CACHE_SECONDS: string(scimReadCacheSeconds)
    SYNC_INTERVAL_MINUTES: string(syncIntervalMinutes)
    SYNC_LEASE_SECONDS: string(syncLeaseSeconds)
    CERT_DEFAULT_VALIDITY_DAYS: string(certDefaultValidityDays)
    CERT_DEFAULT_KEY_SIZE: string(certDefaultKeySize)
    CERT_REVOKE_ON_DISABLE: certRevokeOnDisable ? 'true' : 'false'
    CERT_KEY_POOL_SIZE: string(certKeyPoolSize)
    AUDIT_RETENTION_DAYS: string(auditRetentionDays)
    HR_MAX_DISABLE_PERCENT: string(hrMaxDisablePercent)
    SMTP_HOST: smtpHost
    SMTP_PORT: string(smtpPort)
    SMTP_FROM: smtpFrom
    SMTP_USERNAME: smtpUsername
    SMTP_PASSWORD_SECRET_NAME: smtpPasswordSecretName
  })
}

@description('Name of the function app (for publishing).')
output functionAppName string = functionApp.outputs.name

@description('Base URL of the API.')
output baseUrl string = '${publicUrl}/api'

@description('SCIM Tenant URL to paste into an enterprise app\'s Provisioning page, {tenant_id} replaced.')
output scimTenantUrlPattern string = '${publicUrl}/api/scim/{tenant_id}/v2'

@description('Redirect URI (Web platform) to register on the app registration, exactly.')
output consentRedirectUri string = '${publicUrl}/api/consent/callback'

@description('Redirect URI (Web platform) of delegated HR connections (an administrator signs in through the app), to register on the app registration too, exactly.')
output hrConnectionRedirectUri string = '${publicUrl}/api/v1/hr/connection/callback'

@description('Key Vault URI (the app\'s client secret goes here as app-client-secret).')
output keyVaultUri string = keyVault.outputs.uri

@description('Login authority of the chosen cloud (where admins sign in for admin tokens).')
output loginAuthority string = clouds[cloud].login

@description('Microsoft Graph of the chosen cloud (the app registration\'s API permissions are on it).')
output graphEndpoint string = clouds[cloud].graph

@description('Client id of the app\'s managed identity.')
output identityClientId string = identity.outputs.clientId

@description('Name of the storage account (tables, queues, deployment package).')
output storageAccountName string = storage.outputs.name
